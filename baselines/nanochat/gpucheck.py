"""The GPU check: one script that measures, on one GPU in a few minutes, what the CPU cannot, and writes one JSON
report. It needs no data download (synthetic tokens; the CORE bundle if present, else a synthetic one).

    python -m baselines.nanochat.gpucheck                         # all sections, GPU sizes; writes gpucheck.json
    python -m baselines.nanochat.gpucheck --out r.json --sections train,memory
    python -m baselines.nanochat.gpucheck --small                 # tiny sizes: what the CPU test suite runs

Sections (docs/gpu.md says what every number means):
    calibration  matmul TFLOP/s and memory bandwidth (``profiles.calibrate``)
    train        the gpu profile's recipe (baselines/nanochat) at d12, ~100 steps, compiled: tokens/s, MFU, peak
                 memory, compiled frames, recompiles after the first step, graph breaks
    memory       climbmix at d24, a few steps of one 16 x 2048 micro-step: peak memory against harness.memory
    kernels      fp8 matmul + the Triton softcap cross-entropy inside torch.compile: agreement with eager, time
    attention    FA3 (if installed), FlexAttention and SDPA forward + backward at d24's shapes: agreement, time
    core         CORE records/s of the batched path against the one-record path, and whether they agree

Every section runs on its own: a failure is written into the report (with its traceback) and the next section
runs. On a CPU the sections that need CUDA say so and are skipped. Run the CPU-capable parts as a test:
``python -m pytest tests/test_gpucheck.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from baselines.nanochat import depth as depth_dial
from baselines.nanochat import kernels
from baselines.nanochat.fp8 import fp8_linear, fp8_supported
from baselines.nanochat.model import GPT, attend, attention_masks, select_attention_backend, window_mask
from evals import bundle as eval_bundle
from evals.bundle import Bundle, TaskSpec, resolve_bundle
from evals.core import evaluate_core
from harness import flops, memory, profiles
from harness.hookspecs import Plan, Run
from harness.plugins import call_hook, load_submission
from harness.sharding import Sharding
from harness.tokenizer import train_tokenizer

GIB = 2**30
REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "baselines" / "nanochat"  # the gpu profile's recipe
CLIMBMIX = REPO / "submissions" / "climbmix"  # the record recipe
SECTIONS = ("calibration", "train", "memory", "kernels", "attention", "core")


@dataclass(frozen=True)
class Sizes:
    """How big each section runs. ``GPU`` is the real check; ``SMALL`` is the CPU test suite's."""

    vocab: int = 32768
    seq_len: int = 2048
    train_depth: int = 12
    train_steps: int = 100
    train_skip: int = 10  # steps left out of the timing (compilation, allocator warm-up), as the clock does
    train_batch_tokens: int = 4 * 16 * 2048  # 4 micro-steps of 16 x 2048 per step on one GPU
    memory_depth: int = 24
    memory_steps: int = 3
    memory_batch: int = 16  # sequences per micro-step, the reference's device batch
    kernel_rows: int = 16 * 2048  # logits rows of one micro-step
    kernel_width: int = 1536  # d24's width
    attention_batch: int = 4
    attention_heads: int = 12
    attention_head_dim: int = 128
    attention_windows: tuple[int, ...] = (512, 2048)
    timing_repeats: int = 20
    core_depth: int = 12
    core_records: int = 40  # per task
    core_vocab: int = 4096


GPU = Sizes()
SMALL = Sizes(vocab=512, seq_len=64, train_depth=2, train_steps=4, train_skip=1, train_batch_tokens=2 * 2 * 64,
              memory_depth=2, memory_steps=2, memory_batch=2, kernel_rows=256, kernel_width=128, attention_batch=1,
              attention_heads=2, attention_head_dim=16, attention_windows=(16, 64), timing_repeats=2, core_depth=2,
              core_records=4, core_vocab=300)  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one untimed call, the device synchronised."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compute_dtype(device: torch.device) -> str:
    return "bfloat16" if device.type == "cuda" else "float32"


def training_run(device: torch.device, vocab: int, seq_len: int, depth: int, max_steps: int, batch_tokens: int):
    return Run(profile="gpu" if device.type == "cuda" else "cpu", device=str(device), dtype=compute_dtype(device),
               rank=0, local_rank=0, world_size=1, seed=0, vocab_size=vocab, bos_token_id=0, seq_len=seq_len,
               depth=depth, max_steps=max_steps, max_batch_tokens=batch_tokens)  # fmt: skip


def build(submission, run: Run):
    """Model, plan, optimizer and schedule from the submission's hooks, as the harness calls them."""
    torch.manual_seed(run.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp8 requested where the device has none: noted by the model
        model = call_hook(submission, "build_model", expect=torch.nn.Module, run=run)
    plan = call_hook(submission, "plan_training", expect=Plan, model=model, run=run)
    optimizer = call_hook(submission, "build_optimizer", expect=torch.optim.Optimizer, model=model, plan=plan, run=run)
    schedule = call_hook(submission, "build_schedule", optimizer=optimizer, plan=plan, run=run)
    return model, plan, optimizer, schedule


def train_steps(submission, run: Run, steps: int, on_step: Callable[[int, float, float], None]) -> tuple:
    """Train on synthetic tokens through the hooks and the harness's sharding (one rank); ``on_step(step, seconds,
    loss)`` after each step. Returns (model, plan)."""
    device = torch.device(run.device)
    model, plan, optimizer, schedule = build(submission, run)
    sharding = Sharding(model, optimizer, world_size=1, rank=0)
    accum = plan.grad_accum_steps(1)
    generator = torch.Generator(device=device).manual_seed(run.seed)

    def batches():
        for _ in range(accum):
            rows = torch.randint(0, run.vocab_size, (plan.device_batch, plan.seq_len + 1), device=device,
                                 generator=generator)  # fmt: skip
            yield rows[:, :-1], rows[:, 1:]

    for step in range(min(steps, plan.num_steps)):
        synchronize(device)
        start = time.perf_counter()
        sharding.zero_grad()
        loss = call_hook(submission, "train_step", model=model, batches=batches(), plan=plan, run=run)
        schedule(step)
        sharding.step()
        loss_value = loss.item()
        on_step(step, time.perf_counter() - start, loss_value)
    return model, plan


# ------------------------------------------------------------------------------------------------
# Sections


def section_calibration(device: torch.device, sizes: Sizes) -> dict:
    return profiles.calibrate(device)


def section_train(device: torch.device, sizes: Sizes) -> dict:
    submission = load_submission(str(BASELINE))
    run = training_run(device, sizes.vocab, sizes.seq_len, sizes.train_depth, sizes.train_steps,
                       sizes.train_batch_tokens)  # fmt: skip
    torch._dynamo.reset()
    counters.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, losses, frames = [], [], {}

    def on_step(step: int, s: float, loss: float) -> None:
        seconds.append(s)
        losses.append(loss)
        if step == 0:
            frames["first"] = counters["frames"]["ok"]

    model, plan = train_steps(submission, run, sizes.train_steps, on_step)
    steady = seconds[sizes.train_skip :] or seconds
    step_s = statistics.median(steady)
    tokens_per_s = plan.total_batch_tokens / step_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    breaks = counters["graph_break"]
    return {
        "submission": BASELINE.name,
        "depth": sizes.train_depth,
        "steps": len(seconds),
        "tokens_per_step": plan.total_batch_tokens,
        "micro_batch": [plan.device_batch, plan.seq_len],
        "compiled": bool(getattr(model, "use_compile", False)),
        "attention_backend": getattr(model, "attention_backend", None),
        "first_step_s": round(seconds[0], 3),
        "step_time_median_s": round(step_s, 5),
        "tokens_per_s": round(tokens_per_s),
        "mfu": flops.mfu(plan.flops_per_token, tokens_per_s, name),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 3) if device.type == "cuda" else None,
        "frames_compiled": counters["frames"]["ok"],
        "recompiles_after_first_step": counters["frames"]["ok"] - frames["first"],
        "graph_breaks": sum(breaks.values()),
        "graph_break_reasons": [reason.splitlines()[0] for reason in list(breaks)[:5]],
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }


def measured_peak(submission: str, depth: int, steps: int, sizes: Sizes = GPU) -> tuple[memory.Estimate, int | None]:
    """harness.memory's estimate for one micro-step of ``sizes.memory_batch`` sequences on this machine's device,
    and the peak ``torch.cuda.max_memory_allocated`` over ``steps`` real training steps (None without CUDA)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch_tokens = sizes.memory_batch * sizes.seq_len  # one micro-step per step
    run = training_run(device, sizes.vocab, sizes.seq_len, depth, steps, batch_tokens)
    profile = profiles.PROFILES["gpu" if device.type == "cuda" else "cpu"]
    estimate = memory.estimate(submission, profile, run=run)
    if device.type != "cuda":
        return estimate, None
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    train_steps(load_submission(submission), run, steps, lambda *_: None)
    return estimate, torch.cuda.max_memory_allocated(device)


def section_memory(device: torch.device, sizes: Sizes) -> dict:
    estimate, peak = measured_peak(str(CLIMBMIX), sizes.memory_depth, sizes.memory_steps, sizes)
    result = {
        "submission": CLIMBMIX.name,
        "depth": sizes.memory_depth,
        "micro_batch": list(estimate.micro_batch),
        "estimate": {k: round(getattr(estimate, k) / GIB, 3) for k in (
            "parameters", "gradients", "optimizer_state", "activations", "workspace", "allocated", "required")},
        "capacity_gib": round(estimate.capacity / GIB, 2),
        "measured_peak_gib": None if peak is None else round(peak / GIB, 3),
    }  # fmt: skip
    if peak is not None:
        result["measured_over_estimate"] = round(peak / estimate.allocated, 3)
    else:
        result["note"] = "no CUDA device: the estimate only"
    return result


def section_kernels(device: torch.device, sizes: Sizes) -> dict:

    if device.type != "cuda" or not fp8_supported(device):
        return {"skipped": "needs a CUDA GPU with fp8 matmuls (compute capability 8.9+) and Triton"}
    torch.manual_seed(0)
    rows, width, vocab = sizes.kernel_rows, sizes.kernel_width, sizes.vocab
    x = torch.randn(rows, width, device=device, dtype=torch.bfloat16)
    w = 0.02 * torch.randn(vocab, width, device=device)
    targets = torch.randint(0, vocab, (rows,), device=device)

    def loss_and_grads(fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(xi, wi, targets)
        loss.backward()
        return loss.detach(), xi.grad, wi.grad

    def fp8_loss(xi, wi, t):
        return kernels.softcap_cross_entropy(fp8_linear(xi, wi), t)

    def exact_loss(xi, wi, t):
        return kernels.softcap_cross_entropy_torch(F.linear(xi, wi.to(xi.dtype)), t)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(fp8_loss, dynamic=False)
    eager, comp, exact = loss_and_grads(fp8_loss), loss_and_grads(compiled), loss_and_grads(exact_loss)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()

    return {
        "shape": [rows, width, vocab],
        "graph_breaks": sum(counters["graph_break"].values()),
        "compiled_vs_eager": {
            "loss_abs": abs(comp[0] - eager[0]).item(),
            "grad_x_rel": rel(comp[1], eager[1]),
            "grad_w_rel": rel(comp[2], eager[2]),
        },  # fmt: skip
        "fp8_vs_bf16_exact": {
            "loss_abs": abs(eager[0] - exact[0]).item(),
            "grad_x_rel": rel(eager[1], exact[1]),
            "grad_w_rel": rel(eager[2], exact[2]),
        },  # fmt: skip
        "ms_fwd_bwd": {
            "fp8_triton_compiled": 1e3 * timed(lambda: loss_and_grads(compiled), device, sizes.timing_repeats),
            "fp8_triton_eager": 1e3 * timed(lambda: loss_and_grads(fp8_loss), device, sizes.timing_repeats),
            "bf16_torch_eager": 1e3 * timed(lambda: loss_and_grads(exact_loss), device, sizes.timing_repeats),
        },
    }


def section_attention(device: torch.device, sizes: Sizes) -> dict:

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backends = ["sdpa"]
    if device.type == "cuda":
        backends.append("flex")
        if select_attention_backend(device, dtype, training=True) == "fa3":
            backends.append("fa3")
    B, T, H, D = sizes.attention_batch, sizes.seq_len, sizes.attention_heads, sizes.attention_head_dim
    torch.manual_seed(0)
    q, k, v, g = (torch.randn(B, T, H, D, device=device, dtype=dtype) for _ in range(4))

    def forward_backward(backend: str, window: int):
        (mask,) = attention_masks(T, [window], device, backend)
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = attend(qi, ki, vi, mask, backend)
        out.backward(g)
        return out.detach(), qi.grad, ki.grad, vi.grad

    def reference(window: int):  # float32 softmax attention written out, the mask by hand
        qi, ki, vi = (t.float().transpose(1, 2).clone().requires_grad_() for t in (q, k, v))
        scores = (qi @ ki.transpose(-2, -1)) / D**0.5
        scores = scores.masked_fill(~window_mask(T, window, device), float("-inf"))
        out = scores.softmax(-1) @ vi
        out.backward(g.float().transpose(1, 2))
        return [t.transpose(1, 2) for t in (out.detach(), qi.grad, ki.grad, vi.grad)]

    result = {"shape_btdh": [B, T, D, H], "dtype": str(dtype).removeprefix("torch."), "backends": {}}
    for window in sizes.attention_windows:
        expected = reference(window)
        for backend in backends:
            got = forward_backward(backend, window)
            errors = {name: (a.float() - b).abs().max().item()
                      for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True)}  # fmt: skip
            ms = 1e3 * timed(lambda b=backend, w=window: forward_backward(b, w), device, sizes.timing_repeats)
            result["backends"].setdefault(backend, {})[f"window_{window}"] = {"max_abs_error": errors, "ms": ms}
    return result


def synthetic_bundle(root: Path, records: int):
    """A three-task CORE bundle (multiple choice 10-shot, schema, language modeling) of made-up sentences."""

    rng = random.Random(0)
    words = "the a small large red blue cat dog house river tree walks runs sees finds near over under".split()

    def sentence(n: int = 8) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    rows = {
        "multiple_choice": [{"query": sentence(), "choices": [sentence(3) for _ in range(4)], "gold": rng.randrange(4)}
                            for _ in range(records)],
        "schema": [{"context_options": [sentence(), sentence()], "continuation": sentence(4), "gold": rng.randrange(2)}
                   for _ in range(records)],
        "language_modeling": [{"context": sentence(12), "continuation": sentence(2)} for _ in range(records)],
    }  # fmt: skip
    tasks = []
    for task_type, shots in (("multiple_choice", 10), ("schema", 0), ("language_modeling", 0)):
        path = root / f"{task_type}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[task_type]))
        tasks.append(TaskSpec(f"synthetic_{task_type}", task_type, shots, " ", path.name, path, 25.0))
    baselines = {t.label: t.random_baseline for t in tasks}
    return Bundle(root, tasks, [], "synthetic", {}, baselines), [json.dumps(r) for v in rows.values() for r in v]


def section_core(device: torch.device, sizes: Sizes) -> dict:

    with tempfile.TemporaryDirectory() as tmp:
        found = [Path(p) for p in (os.environ.get("SPEEDRUN_EVAL_BUNDLE"), eval_bundle.SIBLING_BUNDLE) if p]
        found = [p for p in found if (p / "core.yaml").is_file()]  # never a download: the check runs offline
        if found:
            bundle, source = resolve_bundle(found[0]), f"the CORE bundle at {found[0]}"
            texts = [p.read_text()[:200_000] for p in sorted(bundle.root.rglob("*.jsonl"))]
        else:
            bundle, texts = synthetic_bundle(Path(tmp), sizes.core_records)
            source = "a synthetic three-task bundle"
        tokenizer = train_tokenizer(texts, vocab_size=sizes.core_vocab)
        torch.manual_seed(0)
        model = GPT(depth_dial.model_dims(sizes.core_depth, tokenizer.vocab_size), seq_len=sizes.seq_len,
                    compute_dtype=getattr(torch, compute_dtype(device)), device=device).eval()  # fmt: skip
        result = {"bundle": source, "depth": sizes.core_depth, "records_per_task": sizes.core_records}
        answers = {}
        for path in ("batched", "one_record"):
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # few records per task: fewer few-shot examples, as warned
                batched = path == "batched"
                core = evaluate_core(model, tokenizer, bundle, sizes.core_records, str(device), batched=batched)
            synchronize(device)
            seconds = time.perf_counter() - start
            records = sum(r.evaluated for r in core.per_task.values())
            answers[path] = {label: r.accuracy for label, r in core.per_task.items()}
            result[path] = {
                "records": records,
                "seconds": round(seconds, 3),
                "records_per_s": round(records / seconds, 2),
            }
        result["speedup"] = round(result["batched"]["records_per_s"] / result["one_record"]["records_per_s"], 2)
        result["same_accuracies"] = answers["batched"] == answers["one_record"]
    return result


SECTION_FUNCTIONS = {name: globals()[f"section_{name}"] for name in SECTIONS}


# ------------------------------------------------------------------------------------------------
# The report


def run_check(device: torch.device, sizes: Sizes, sections=SECTIONS, log=print) -> dict:
    """Run ``sections`` on ``device``; every section's result, skip reason or error goes into the report."""
    started = time.time()
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else profiles.cpu_model(),
        "torch": torch.__version__,
        "sizes": dataclasses.asdict(sizes),
        "sections": {},
    }
    for name in sections:
        began = time.time()
        try:
            result = SECTION_FUNCTIONS[name](device, sizes)
        except Exception as exc:  # noqa: BLE001 - one broken section must not cost the others
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        result["section_s"] = round(time.time() - began, 2)
        report["sections"][name] = result
        status = "skipped" if "skipped" in result else "FAILED" if "error" in result else "ok"
        log(f"gpucheck: {name:<12} {status:<8} {result['section_s']:7.1f} s")
    report["wall_s"] = round(time.time() - started, 2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baselines.nanochat.gpucheck", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpucheck.json"), help="the JSON report to write")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--small", action="store_true", help="tiny sizes (seconds on a CPU; what the tests run)")
    parser.add_argument("--device", help="default: cuda if present, else cpu")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # as harness.run sets for training
    report = run_check(device, SMALL if args.small else GPU, sections)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [name for name, result in report["sections"].items() if "error" in result]
    print(
        f"gpucheck: report in {args.out} ({report['wall_s']:.0f} s)"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Hardware profiles, the hardware fingerprint and a short calibration.

A profile fixes what a run on that hardware is: the device, the world size it needs, the sequence length,
the vocabulary, the evaluation budget, and whether it can set a record. ``8xh100`` is the record profile;
``gpu`` is any CUDA setup for development; ``cpu`` is the smoke profile that runs end to end in minutes.

    profile = resolve_profile("auto")                   # cpu here, gpu or 8xh100 where CUDA is present
    problems = hard_mismatches(profile, fingerprint())  # non-empty: refuse the run
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

# The reference evaluates 80 x 524,288 validation tokens (docs/spec/reference-recipe.md, Validation bits per byte).
REFERENCE_VAL_TOKENS = 80 * 524_288


GPU_BUDGETS = {
    "worker_start": (0.0, 120.0),  # the worker process starting: Python, torch, CUDA
    "load": (0.0, 60.0),  # importing the submission
    "build": (0.0, 300.0),  # model, plan, optimizer, schedule (the reference builds d24 in seconds)
    "warmup": (0.0, 900.0),  # 10 warm-up steps with torch.compile (the reference compiles in 1-2 minutes)
    "log": (0.01, 10.0),  # the harness's logging and the submission's log_metrics observers
    "eval_bpb": (0.10, 120.0),  # the in-training val_bpb on held-out rows
    "checkpoint": (0.10, 300.0),
    "export": (0.0, 600.0),
}
CPU_BUDGETS = {
    "worker_start": (0.0, 60.0),
    "load": (0.0, 30.0),
    "build": (0.0, 20.0),  # a d4 model, its optimizer and the export check take a few seconds
    "warmup": (0.0, 120.0),
    "log": (0.01, 3.0),
    "eval_bpb": (0.25, 30.0),
    "checkpoint": (0.10, 30.0),
    "export": (0.0, 60.0),
}


@dataclass(frozen=True)
class Profile:
    name: str
    device_type: str  # "cuda" or "cpu"
    seq_len: int
    vocab_size: int
    val_tokens: int  # validation budget for val_bpb
    core_max_per_task: int  # -1: every record of every task
    record_eligible: bool
    world_size: int | None = None  # required world size, None: any
    gpu_name: str | None = None  # substring the GPU's name must contain
    min_gpu_memory_gb: float = 0.0
    default_depth: int | None = None  # None: the submission's own default
    max_steps: int | None = None
    max_batch_tokens: int | None = None
    dataset: str | None = None  # forces the dataset (the smoke profile cannot download real corpora)
    warmup_steps: int = 10  # untimed steps before the clock starts (compilation, allocator warm-up)
    eval_every: int = 250  # val_bpb every N steps, as the reference does
    monitor_tokens: int = 4 * 524_288  # held-out validation tokens for the in-training val_bpb (after val_tokens)
    # Untimed phases that run submission code are bounded: over its budget a run is not eligible (docs/rules.md).
    # phase -> (share of training time, floor in seconds); the budget is the larger of the two.
    budgets: dict = field(default_factory=lambda: dict(GPU_BUDGETS))
    hang_floor_s: float = 300.0  # a step making no progress this long (and 20x the median step) is hung
    hang_cap_s: float = 3600.0  # any other phase of the worker making no progress this long is hung
    # Calibration floors for record eligibility: a node slower than this is not a fair 8xH100.
    min_matmul_tflops: float = 0.0
    min_memory_gbps: float = 0.0


PROFILES = {
    "8xh100": Profile(
        name="8xh100",
        device_type="cuda",
        seq_len=2048,
        vocab_size=32768,
        val_tokens=REFERENCE_VAL_TOKENS,
        core_max_per_task=-1,
        record_eligible=True,
        world_size=8,
        gpu_name="H100",
        min_gpu_memory_gb=79.0,
        # Floors at about 85% of what a healthy H100 SXM measures with the calibration below
        # (dense bf16 matmul about 700-750 TFLOP/s achieved, HBM3 copy about 2.6-2.9 TB/s).
        min_matmul_tflops=600.0,
        min_memory_gbps=2200.0,
    ),
    "gpu": Profile(
        name="gpu",
        device_type="cuda",
        seq_len=2048,
        vocab_size=32768,
        val_tokens=20 * 524_288,
        core_max_per_task=-1,
        record_eligible=False,
    ),
    # The smoke profile: d4, 256-token rows, 4096-token steps, a 4096-token BPE on the Shakespeare corpus, and
    # CORE on 11 records per task (the fewest that still give every 10-shot task its 10 examples). Measured on
    # 2 AMD EPYC cores: about 3,000 tokens/s for d4, so 60 steps train in about 80 s, the whole run in 2 minutes.
    "cpu": Profile(
        name="cpu",
        device_type="cpu",
        seq_len=256,
        vocab_size=4096,
        val_tokens=16 * 1024,
        core_max_per_task=11,
        record_eligible=False,
        default_depth=4,
        max_steps=60,
        max_batch_tokens=4096,
        dataset="smoke",
        warmup_steps=1,
        eval_every=30,
        monitor_tokens=16 * 1024,
        budgets=dict(CPU_BUDGETS),
        hang_floor_s=30.0,
        hang_cap_s=300.0,
    ),
}


def resolve_profile(name: str) -> Profile:
    if name == "auto":
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            is_h100 = "H100" in torch.cuda.get_device_name(0)
            name = "8xh100" if count == 8 and is_h100 else "gpu"
        else:
            name = "cpu"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of auto, {', '.join(PROFILES)}")
    return PROFILES[name]


# ------------------------------------------------------------------------------------------------
# Fingerprint


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint() -> dict:
    """What this machine is: enough to tell two runs' hardware and software apart."""
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "gpu_count": 0,
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpu_count"] = torch.cuda.device_count()
        for i in range(info["gpu_count"]):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / 1e9, 1)})
        info["cuda"] = torch.version.cuda
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else None
        info["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        info["topology"] = _run(["nvidia-smi", "topo", "-m"])
    return info


def hard_mismatches(profile: Profile, fp: dict, world_size: int) -> list[str]:
    """Reasons this hardware cannot run ``profile`` at all (the run is refused)."""
    problems = []
    if profile.device_type == "cuda" and not fp["cuda_available"]:
        problems.append(f"profile {profile.name!r} needs CUDA GPUs, found none (CPU: {fp['cpu_model']})")
    if profile.device_type == "cuda" and fp["cuda_available"]:
        names = sorted({gpu["name"] for gpu in fp["gpus"]})
        if profile.gpu_name and not all(profile.gpu_name in name for name in names):
            problems.append(f"profile {profile.name!r} needs {profile.gpu_name} GPUs, found {', '.join(names)}")
        small = [g for g in fp["gpus"] if g["memory_gb"] < profile.min_gpu_memory_gb]
        if small:
            problems.append(
                f"profile {profile.name!r} needs >= {profile.min_gpu_memory_gb} GB per GPU, "
                f"found {small[0]['memory_gb']} GB"
            )
    if profile.world_size is not None and world_size != profile.world_size:
        problems.append(
            f"profile {profile.name!r} needs world size {profile.world_size} (torchrun --nproc_per_node=8), "
            f"got {world_size}"
        )
    return problems


def describe_hardware(fp: dict) -> str:
    if fp["cuda_available"]:
        return f"{fp['gpu_count']} x {fp['gpus'][0]['name']} ({fp['gpus'][0]['memory_gb']} GB)"
    return f"no GPU; CPU {fp['cpu_model']} with {fp['cpu_count']} cores"


# ------------------------------------------------------------------------------------------------
# Calibration: a few seconds of standard work, stored with every result so slow nodes are visible


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def calibrate(device: torch.device, world_size: int = 1) -> dict:
    """Matmul throughput, memory bandwidth and (with several ranks) all-reduce bandwidth on ``device``."""
    on_gpu = device.type == "cuda"
    n = 8192 if on_gpu else 512
    dtype = torch.bfloat16 if on_gpu else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, repeats=20 if on_gpu else 5)
    result = {"matmul_dtype": str(dtype).removeprefix("torch."), "matmul_tflops": 2 * n**3 / seconds / 1e12}
    numel = (1 << 28) if on_gpu else (1 << 22)
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    seconds = _timed(lambda: dst.copy_(src), device, repeats=20 if on_gpu else 5)
    result["memory_gbps"] = 2 * src.numel() * 4 / seconds / 1e9  # a copy reads and writes every byte
    if world_size > 1 and torch.distributed.is_initialized():
        buf = torch.ones((1 << 26) if on_gpu else (1 << 20), device=device)
        seconds = _timed(lambda: torch.distributed.all_reduce(buf), device, repeats=5)
        # Bus bandwidth as nccl-tests defines it for all-reduce: bytes * 2(n-1)/n per second.
        result["allreduce_busbw_gbps"] = buf.numel() * 4 * 2 * (world_size - 1) / world_size / seconds / 1e9
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.items()}  # 4 significant figures

"""A tiny training loop over a plugin's hooks, for tests and quick CPU checks; not the harness's loop.

    pm = plugin_manager(baseline_submission, my_submission)   # later plugins win, as in the harness
    losses = train(pm, run, tokens)                           # tokens: a 1-D int64 tensor of token ids

Run it by hand on any text file (a tokenizer is trained on the file first):

    PYTHONPATH=tests python -m helpers_tinytrain some.txt --depth 2 --steps 30 [--submission baselines/gpt2]

It calls the hooks in the harness's order (select_dataset, build_model, plan_training, build_optimizer,
build_schedule), then per step: forward/backward over the micro-batches, ``schedule(step)``, and the
optimizer step through the harness's sharding (``harness.sharding.Sharding``: with several ranks the gradients
are reduce-scattered, each rank steps the parameters it owns and the weights are all-gathered). It has no
clock, no evals and no record; the harness owns those.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pluggy
import torch
import torch.distributed as dist

from baselines.nanochat import submission as baseline
from harness import hookspecs
from harness.hookspecs import Plan, Run
from harness.sharding import Sharding
from harness.tokenizer import train_tokenizer


def lambada_tokens(bundle_dir: str | Path, vocab_size: int = 1024, chars: int = 400_000):
    """English text for quick training checks: LAMBADA passages (fiction) from the CORE eval bundle, tokenized
    with a BPE trained on them. Returns (tokenizer, tokens, unigram entropy of the tokens in nats)."""
    path = Path(bundle_dir) / "eval_data" / "language_understanding" / "lambada_openai.jsonl"
    rows = [json.loads(line) for line in path.open()]
    text = "\n\n".join(f"{r['context']} {r['continuation']}" for r in rows)[:chars]
    tokenizer = train_tokenizer([text], vocab_size=vocab_size)
    tokens = torch.tensor(tokenizer.encode(text, prepend_bos=True))
    counts = torch.bincount(tokens, minlength=tokenizer.vocab_size).float()
    p = counts[counts > 0] / counts.sum()
    return tokenizer, tokens, -(p * p.log()).sum().item()  # the loss of a model that knows only frequencies


def plugin_manager(*plugins) -> pluggy.PluginManager:
    """A plugin manager with the speedrun hook specs and ``plugins`` registered in order."""
    pm = pluggy.PluginManager("speedrun")
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    return pm


def load_submission(folder: str | Path):
    """Import ``<folder>/submission.py`` as a module (the harness's convention)."""
    path = Path(folder) / "submission.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; a submission folder needs a submission.py with its hooks")
    spec = importlib.util.spec_from_file_location(f"submission_{Path(folder).name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batches(tokens: torch.Tensor, plan: Plan, run: Run, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of ``step``: the step's global batch is a contiguous run of sequences, which the
    ranks and micro-steps split between them, so any world size sees the same global batch."""
    accum = plan.grad_accum_steps(run.world_size)
    sequences_per_step = plan.total_batch_tokens // plan.seq_len
    for micro in range(accum):
        first = step * sequences_per_step + (micro * run.world_size + run.rank) * plan.device_batch
        starts = (torch.arange(first, first + plan.device_batch) * plan.seq_len) % (len(tokens) - plan.seq_len - 1)
        rows = torch.stack([tokens[s : s + plan.seq_len + 1] for s in starts.tolist()]).to(run.device)
        yield rows[:, :-1], rows[:, 1:]


def train(pm: pluggy.PluginManager, run: Run, tokens: torch.Tensor) -> list[float]:
    """Train through the hooks; return the loss of every step (averaged over ranks)."""
    hook = pm.hook
    hook.select_dataset(run=run)
    model = hook.build_model(run=run)
    plan = hook.plan_training(model=model, run=run)
    optimizer = hook.build_optimizer(model=model, plan=plan, run=run)
    schedule = hook.build_schedule(optimizer=optimizer, plan=plan, run=run)
    sharding = Sharding(model, optimizer, run.world_size, run.rank)
    accum = plan.grad_accum_steps(run.world_size)
    losses = []
    for step in range(plan.num_steps):
        sharding.zero_grad()
        total = torch.zeros((), device=run.device)
        for x, y in batches(tokens, plan, run, step):
            loss = model(x, y) / accum
            loss.backward()
            total += loss.detach()
        if run.world_size > 1:
            dist.all_reduce(total)
            total /= run.world_size  # gloo has no AVG
        schedule(step)
        sharding.step()
        losses.append(total.item())
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", help="a UTF-8 text file to train on")
    parser.add_argument("--submission", help="a submission folder to register after the baseline")
    parser.add_argument("--depth", type=int, default=2, help="model depth (layers)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary, special tokens included")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="cap on tokens per optimizer step")
    parser.add_argument("--steps", type=int, default=30, help="cap on optimizer steps")
    args = parser.parse_args(argv)

    text = Path(args.text).read_text()
    tokenizer = train_tokenizer([text], vocab_size=args.vocab_size)
    tokens = torch.tensor(tokenizer.encode(text, prepend_bos=True))
    run = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0,
              vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id, seq_len=args.seq_len,
              depth=args.depth, max_steps=args.steps, max_batch_tokens=args.batch_tokens)  # fmt: skip
    plugins = [baseline] + ([load_submission(args.submission)] if args.submission else [])
    torch.manual_seed(run.seed)
    for step, loss in enumerate(train(plugin_manager(*plugins), run, tokens)):
        print(f"step {step:4d}  loss {loss:.4f}", file=sys.stdout)


if __name__ == "__main__":
    main()

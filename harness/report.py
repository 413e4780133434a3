"""What a run shows: the progress line, the closing summary table and the commands a user wants next.

Only the referee prints them. The record itself is assembled by the referee (harness/run.py, ``Referee.assemble``).
"""

from __future__ import annotations

import sys

from harness.record import Record, Submission


class Progress:
    """A tqdm bar on a terminal; on a pipe (CI, logs) a plain line about every 5% of the run."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.bar = None
        self.every = max(1, total // 20)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        mfu = f"{metrics['mfu'] * 100:.1f}%" if metrics.get("mfu") is not None else "n/a"
        lr = f" | lr x{metrics['lr_mult']:.3f}" if isinstance(metrics.get("lr_mult"), float | int) else ""
        text = (f"loss {metrics['loss']:.4f}{lr} | {metrics['step_ms']:,.0f} ms/step | {metrics['tokens_per_s']:,.0f} "
                f"tok/s | MFU {mfu} | trained {metrics['trained_s']:,.1f}s")  # fmt: skip
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif (step + 1) % self.every == 0 or step + 1 == self.total:
            eta = metrics["eta_s"]
            print(f"step {step + 1:>6}/{self.total} | {text} | ETA {eta:,.0f}s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def describe_submission(sub: Submission | None) -> str:
    if sub is None:
        return "-"
    return f"{sub.name} (overrides: {', '.join(sub.overrides) or 'none'})"


def closing_lines(record: Record, path, out) -> str:
    """What was written, and the commands a user wants next."""
    lines = [f"record: {path}", f"events: {out / 'events.jsonl'}"]
    if record.program:
        lines.append(f"model:  {record.program['path']} (torch.export program; python -m harness.evaluate {out})")
    if record.status == "interrupted" and record.checkpoint:
        lines.append(f"checkpoint: {record.checkpoint}")
    if record.status in ("interrupted", "failed") and (record.checkpoint or record.program):
        lines.append(f"resume: python -m harness.run {record.submission.path if record.submission else ''} "
                     f"--out {out} --resume")  # fmt: skip
    if record.status == "finished":
        lines.append(f"plot:   python -m harness.plot {out}")
        lines.append(f"compare: python -m harness.compare {record.submission.path} OTHER_SUBMISSION")
        track = "record" if record.eligibility.eligible else "dev"
        lines.append(f"file:   python -m leaderboard add {out} ... --track {track}")
    return "\n".join(lines)


def summary_table(record: Record) -> str:
    """The closing lines of a run: what ran, how long it trained, what it scored, and whether it can count."""
    m, run, verdict = record.metrics, record.run, record.eligibility
    if verdict.eligible:
        eligible = "yes"
    elif not verdict.reasons:
        eligible = "no (the run stopped before it was judged)"
    else:
        eligible = "no: " + "; ".join(verdict.reasons[:3]) + ("; ..." if len(verdict.reasons) > 3 else "")
    rows = [
        ("submission", describe_submission(record.submission)),
        ("status", record.status),
        ("profile", f"{record.profile}" + (f" ({run.world_size} x {run.device})" if run else "")),
        ("steps", f"{record.steps_completed}" + (f" / {record.plan.num_steps}" if record.plan else "")),
        ("tokens", f"{record.data.tokens_consumed:,}" if record.data else "-"),
        ("training time", f"{record.training_time_s:.1f} s ({record.training_time_s / 3600:.4f} h)"),
        ("wall time", f"{record.wall_time_s:.1f} s"),
        ("final loss", f"{m.final_loss:.4f}" if m.final_loss is not None else "-"),
        ("val_bpb", f"{m.val_bpb:.4f}" if m.val_bpb is not None else "-"),
        (m.core_label or "CORE", f"{m.score:.4f}" if m.score is not None else "-"),
        ("eligible", eligible),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v}" for k, v in rows)

"""A/B comparison of two submissions on this machine: interleaved runs, then every metric's difference with its
95% confidence interval and p-value, computed by the statistics module (``harness/stats.py``).

    python -m harness.compare submissions/climbmix submissions/my_idea --profile cpu --depth 2 --max-steps 10 \
        --no-core
    python -m harness.compare A B --profile cpu --depths 2,4 --max-steps 10 --no-core   # does it hold across depths?
    python -m harness.compare A B --profile gpu --depth 12 --runs 5                     # one GPU
    python -m harness.compare A B --profile 8xh100 --nproc-per-node 8 --runs 5          # each run via torchrun

A is the reference (usually the current record's submission), B the candidate. Every harness.run flag that this
command does not define (``--max-steps``, ``--no-core``, ``--max-per-task``, ``--eval-bundle``, ...) is passed to
every run unchanged. The report (``compare.md``, also printed) and its data (``compare.json``) are written to
``--out`` beside the runs (``runs/<depth>_<A|B>_seed<S>/``, each a normal run directory) and their logs.

How the runs are laid out, and why:
- **Interleaved, order alternating per pair**: A B, B A, A B, ... A machine's speed drifts (thermals, other
  jobs, a warm page cache); interleaving spreads the drift over both sides, and alternating which side goes
  first keeps a steady drift or a cold first run from favouring either (a linear drift cancels every 2 pairs).
- **Seeds**: pair i runs both A and B with seed ``--seed + i``. Each side's runs use distinct seeds, so the
  spread within a side is the real seed-to-seed noise the leaderboard sees; the two runs of a pair share the
  model initialisation and data order, so a difference in loss is the change's and not a lucky seed's (two
  copies of one submission give identical losses on CPU). Welch's test treats the sides as independent; the
  shared seeds make the two sides positively correlated, which only makes the test conservative.
- **Statistics**: ``compare_samples(B, A)`` (Welch's unequal-variance t-test): the difference B - A with its
  95% interval, the two-sided p-value, and the ratio B / A with its Fieller interval. A difference is called
  significant when p < 0.05, that is when the 95% interval of the difference excludes zero.
- **Depth transfer** (``--depths``): the same comparison at each depth, then per metric a verdict: "holds"
  when every depth shows a significant difference of the same sign and the sizes agree (the depths' 95%
  intervals share a value: the ratio's for time and throughput, the difference's for losses and scores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import profiles
from harness.markdown import markdown_table
from harness.plugins import SubmissionError, load_submission
from harness.record import Record, RecordError
from harness.referee import judge
from harness.run import parse_args as harness_parse_args
from harness.stats import CONFIDENCE, Comparison, compare_samples

ALPHA = 1 - CONFIDENCE  # two-sided: p < ALPHA exactly when the 95% interval of the difference excludes zero
LOSS_FRACTIONS = (0.25, 0.5, 0.75)  # loss compared a quarter, half and three quarters into training (and at the end)
OWNED_FLAGS = ("--out", "--seed", "--resume", "--depth")  # set per run by this command; refused in pass-through


class CompareError(Exception):
    """The comparison cannot go on; the message names the problem and the fix."""


# ------------------------------------------------------------------------------------------------
# Metrics: what is read from each run's record.json, and which direction is better


@dataclass(frozen=True)
class Metric:
    name: str
    better: str  # "lower" or "higher"
    size: str  # how the size of a difference is judged across depths: "ratio" (B / A) or "diff" (B - A)
    read: Callable[[Record], float | None]


BASE_METRICS = [
    Metric("training time (s)", "lower", "ratio", lambda r: r.training_time_s),
    Metric("tokens/s", "higher", "ratio", lambda r: r.metrics.tokens_per_s),
    Metric("val_bpb", "lower", "diff", lambda r: r.metrics.val_bpb),
    Metric("CORE", "higher", "diff", lambda r: r.metrics.score),
    Metric("final loss", "lower", "diff", lambda r: r.metrics.final_loss),
]


def fixed_step_losses(records: Sequence[Record]) -> list[Metric]:
    """Loss a quarter, half and three quarters into the shortest run, at steps every run's loss curve holds.

    The record keeps about 200 points of the curve, so a target step is snapped down to the nearest step that
    all runs recorded. Steps are shown 1-based, as the run's progress lines count them.
    """
    common = set.intersection(*({int(s) for s, _ in r.loss_curve} for r in records))
    shortest = min(r.steps_completed for r in records)
    chosen = []
    for fraction in LOSS_FRACTIONS:
        below = [s for s in common if s + 1 <= fraction * shortest]
        if below and max(below) not in chosen:
            chosen.append(max(below))
    return [Metric(f"loss at step {s + 1}", "lower", "diff", lambda r, s=s: r.loss_at(s)) for s in chosen]


# ------------------------------------------------------------------------------------------------
# One metric compared: the statistics module's numbers and a verdict in words


@dataclass
class Row:
    metric: str
    better: str
    size: str
    a: list[float]  # A's values, in seed order
    b: list[float]
    comparison: Comparison  # compare_samples(b, a): its "a" side is B, so diff = B - A and ratio = B / A
    identical: bool  # every pair gave exactly the same value
    effect: int  # +1: B significantly better, -1: B significantly worse, 0: no significant difference
    verdict: str


def compare_metric(metric: Metric, a: list[float], b: list[float]) -> Row:
    """Welch's comparison of B against A for one metric, with a verdict that survives zero variance.

    Two copies of one submission give exactly equal losses on CPU (same seed, same data): every pair equal is
    reported as "identical", not as the NaN that a test on zero variance gives. When every run of each side
    gave one value but the two differ (a metric that does not depend on the seed), the difference is certain
    and reported as such, without a p-value.
    """
    c = compare_samples(b, a)
    sign = 1 if metric.better == "higher" else -1
    identical = a == b
    if identical:
        effect, verdict = 0, "identical"
    elif math.isnan(c.p_value) and c.diff != 0:  # no noise on either side: the difference is exact
        effect = sign * (1 if c.diff > 0 else -1)
        verdict = f"B {'better' if effect > 0 else 'worse'} in every run (no run-to-run noise)"
    elif c.p_value < ALPHA:
        effect = sign * (1 if c.diff > 0 else -1)
        verdict = f"B significantly {'better' if effect > 0 else 'worse'}"
    else:
        effect, verdict = 0, "no significant difference"
    return Row(metric.name, metric.better, metric.size, a, b, c, identical, effect, verdict)


def compare_runs(a_records: list[Record], b_records: list[Record]) -> list[Row]:
    """Every metric that all runs have, in table order: time, throughput, evals, final and fixed-step losses."""
    rows = []
    for metric in BASE_METRICS + fixed_step_losses(a_records + b_records):
        a = [metric.read(r) for r in a_records]
        b = [metric.read(r) for r in b_records]
        if any(v is None for v in a + b):
            continue  # e.g. CORE under --no-core: a metric some runs lack is not compared
        rows.append(compare_metric(metric, [float(v) for v in a], [float(v) for v in b]))
    return rows


# ------------------------------------------------------------------------------------------------
# Depth transfer: does the gain keep its sign and size from depth to depth?


@dataclass
class Transfer:
    metric: str
    verdict: str  # holds | sign holds, size differs | does not hold | inconclusive | no difference at any depth
    reason: str


def size_interval(row: Row) -> tuple[float, float]:
    """The row's size as an interval: the ratio's (Fieller) or the difference's; the point when it is exact.

    An unbounded Fieller interval (NaN ends with noise present) is taken as covering every ratio.
    """
    c = row.comparison
    if row.size == "ratio":
        point, low, high = c.ratio, c.ratio_ci_low, c.ratio_ci_high
    else:
        point, low, high = c.diff, c.diff_ci_low, c.diff_ci_high
    if math.isnan(low) or math.isnan(high):
        exact = math.isnan(c.p_value) and not math.isnan(point)  # no noise: the point is the size
        return (point, point) if exact else (-math.inf, math.inf)
    return low, high


def transfer_verdict(per_depth: dict[int, Row]) -> Transfer:
    """Judge one metric across depths (the reference maintainers' "does it generalise across depths")."""
    rows = list(per_depth.values())
    name = rows[0].metric
    effects = {depth: row.effect for depth, row in per_depth.items()}
    described = ", ".join(f"d{d}: {_size(row)} ({row.verdict})" for d, row in per_depth.items())
    if all(row.identical for row in rows):
        return Transfer(name, "identical at every depth", described)
    if 1 in effects.values() and -1 in effects.values():
        return Transfer(name, "does not hold", f"B better at some depths and worse at others; {described}")
    if 0 in effects.values():
        if set(effects.values()) == {0}:
            return Transfer(name, "no difference at any depth", described)
        missing = ", ".join(f"d{d}" for d, e in effects.items() if e == 0)
        return Transfer(name, "inconclusive", f"not significant at {missing}; {described}")
    intervals = [size_interval(row) for row in rows]
    if max(low for low, _ in intervals) <= min(high for _, high in intervals):
        return Transfer(name, "holds", f"same sign, sizes agree within their 95% intervals; {described}")
    return Transfer(name, "sign holds, size differs", f"the 95% intervals of the size do not overlap; {described}")


# ------------------------------------------------------------------------------------------------
# The runs: A and B interleaved on this machine, each a real `python -m harness.run` subprocess


@dataclass
class RunSpec:
    depth: int | None
    pair: int
    side: str  # "A" or "B"
    submission: str
    seed: int
    out: Path
    log: Path
    record: Record | None = None  # once it has run


def plan_runs(a: str, b: str, depths: list[int | None], runs: int, seed: int, out: Path) -> list[RunSpec]:
    """Per depth, pair i runs A and B with seed seed+i; A goes first in even pairs, B in odd ones."""
    specs = []
    for depth in depths:
        tag = f"d{depth}" if depth is not None else "default-depth"
        for pair in range(runs):
            order = [("A", a), ("B", b)] if pair % 2 == 0 else [("B", b), ("A", a)]
            for side, submission in order:
                name = f"{tag}_{side}_seed{seed + pair}"
                specs.append(
                    RunSpec(
                        depth, pair, side, submission, seed + pair, out / "runs" / name, out / "logs" / f"{name}.log"
                    )
                )
    return specs


def harness_command(spec: RunSpec, profile: str, nproc: int, extra: list[str]) -> list[str]:
    launcher = [sys.executable, "-m", "harness.run"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launcher += ["-m", "harness.run"]
    cmd = [*launcher, spec.submission, "--profile", profile, "--seed", str(spec.seed), "--out", str(spec.out)]
    if spec.depth is not None:
        cmd += ["--depth", str(spec.depth)]
    return cmd + extra


def execute(spec: RunSpec, command: list[str]) -> Record:
    """Run one harness run to completion, its output in the log file; return its record or raise naming the log."""
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    record_path = spec.out / "record.json"
    if not record_path.is_file():
        tail = spec.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise CompareError(
            f"run {spec.out.name} ({spec.submission}, seed {spec.seed}) exited with status {code} and wrote no "
            f"record; its log {spec.log} ends with:\n  " + "\n  ".join(tail)
        )
    try:
        record = Record.read(record_path)
    except RecordError as exc:
        raise CompareError(f"run {spec.out.name} ({spec.submission}, seed {spec.seed}): {exc}") from None
    if record.status != "finished":
        message = record.error.message if record.error else "no error message"
        raise CompareError(
            f"run {spec.out.name} ({spec.submission}, seed {spec.seed}) {record.status}: {message}. "
            f"Full output in {spec.log}; fix the submission (or its flags) and compare again."
        )
    return record


# ------------------------------------------------------------------------------------------------
# The report: a markdown table per depth, the transfer verdicts, and the same numbers as JSON


def _num(x: float) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:.4g}"


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) or math.isnan(high) else f"[{low:.4g}, {high:.4g}]"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2g}"


def _size(row: Row) -> str:
    c = row.comparison
    if row.size == "ratio":
        return f"B/A {_num(c.ratio)} {_interval(c.ratio_ci_low, c.ratio_ci_high)}"
    return f"B-A {_num(c.diff)} {_interval(c.diff_ci_low, c.diff_ci_high)}"


def headline(rows: list[Row]) -> str:
    """One sentence on training time, the question a contributor asks first."""
    row = next(r for r in rows if r.metric.startswith("training time"))
    c = row.comparison
    ratio = f"{c.ratio:.3f}x A's (95% CI {_interval(c.ratio_ci_low, c.ratio_ci_high)})"
    if row.effect > 0:
        end = f"B is significantly faster, by {(1 - c.ratio) * 100:.1f}%"
    elif row.effect < 0:
        end = f"B is significantly slower, by {(c.ratio - 1) * 100:.1f}%"
    else:
        end = "no significant difference"
    return f"Training time: B takes {ratio}, p = {_p(c.p_value)}: {end}."


def table(rows: list[Row]) -> str:
    header = ["metric", "better", "A mean", "B mean", "B - A [95% CI]", "B / A [95% CI]", "p", "verdict"]
    cells = []
    for row in rows:
        c = row.comparison
        diff = f"{_num(c.diff)} {_interval(c.diff_ci_low, c.diff_ci_high)}"
        ratio = f"{_num(c.ratio)} {_interval(c.ratio_ci_low, c.ratio_ci_high)}"
        cells.append([row.metric, row.better, _num(c.mean_b), _num(c.mean_a), diff, ratio, _p(c.p_value), row.verdict])
    return markdown_table(header, cells)


def eligibility(records: list[Record]) -> str:
    """What the referee's verdict says of the compared runs, in one line: a comparison on a development profile
    says which submission is faster there, not that either could set a record."""
    reasons = sorted({reason for record in records for reason in judge(record).reasons})
    if not reasons:
        return "every run is eligible"
    return "not eligible: " + "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")


def render_markdown(meta: dict, per_depth: dict, transfers: list[Transfer]) -> str:
    out = [
        f"# {meta['a']['name']} (A) vs {meta['b']['name']} (B)",
        "",
        f"A: `{meta['a']['spec']}` (source {meta['a']['source_digest'][:12]}); "
        f"B: `{meta['b']['spec']}` (source {meta['b']['source_digest'][:12]}).",
        f"{meta['runs']} + {meta['runs']} runs per depth, interleaved (A B, B A, ...) on one machine "
        f"({meta['hardware']}); "
        f"profile `{meta['profile']}`; seeds {meta['seeds']} (pair i: both sides seed i); "
        f"harness flags: `{' '.join(meta['harness_args']) or '(none)'}`.",
        "Welch's t-test on each metric (harness/stats.py): B - A and B / A with 95% intervals, two-sided p; "
        f"significant when p < {ALPHA:.2g}.",
        f"Eligibility of these runs for a record (harness/referee.py): {meta['eligibility']}.",
    ]
    for depth, rows in per_depth.items():
        out += ["", f"## Depth {depth}", "", headline(rows), "", table(rows)]
    if transfers:
        rows = [[t.metric, f"**{t.verdict}**", t.reason] for t in transfers]
        out += ["", "## Depth transfer", "", markdown_table(["metric", "verdict", "per depth"], rows)]
    return "\n".join(out) + "\n"


def _jsonable(x):
    """NaN and infinities become null: strict JSON has no NaN."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def metric_json(row: Row) -> dict:
    c = row.comparison
    return {
        "metric": row.metric,
        "better": row.better,
        "a": row.a,
        "b": row.b,
        "mean_a": c.mean_b,
        "mean_b": c.mean_a,
        "diff_b_minus_a": c.diff,
        "diff_ci": [c.diff_ci_low, c.diff_ci_high],
        "ratio_b_over_a": c.ratio,
        "ratio_ci": [c.ratio_ci_low, c.ratio_ci_high],
        "t": c.t,
        "df": c.df,
        "p_value": c.p_value,
        "identical": row.identical,
        "effect": row.effect,
        "verdict": row.verdict,
    }


def report_json(meta: dict, specs: list[RunSpec], per_depth: dict, transfers: list[Transfer]) -> dict:
    return _jsonable(
        {
            "schema": "speedrun-compare/1",
            **meta,
            "alpha": ALPHA,
            "order": [
                {"depth": s.depth, "pair": s.pair, "side": s.side, "seed": s.seed, "out": str(s.out)} for s in specs
            ],
            "depths": [
                {
                    "depth": depth,
                    "metrics": [metric_json(row) for row in rows],
                }
                for depth, rows in per_depth.items()
            ],
            "transfer": [asdict(t) for t in transfers],
        }
    )


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m harness.compare",
        description=__doc__.split("\n\n")[0],  # the first paragraph: a whole sentence
        epilog="Any other harness.run flag (--max-steps N, --no-core, --max-per-task N, --eval-bundle DIR, ...) "
        "is passed to every run.",
        allow_abbrev=False,  # a prefix of a harness flag must reach the harness, not match one of ours
    )
    p.add_argument("a", metavar="SUBMISSION_A", help="the reference, e.g. the record's submission folder")
    p.add_argument("b", metavar="SUBMISSION_B", help="the candidate")
    p.add_argument("--runs", type=int, default=3, help="runs of each submission per depth (at least 2; default 3)")
    p.add_argument("--profile", default="auto", choices=["auto", *profiles.PROFILES], help="harness profile")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--depth", type=int, help="model depth for every run (default: profile or submission)")
    depth.add_argument("--depths", help="comma-separated depths, e.g. 2,4: the comparison at each, then transfer")
    p.add_argument("--seed", type=int, default=0, help="pair i runs both submissions with seed SEED+i (default 0)")
    p.add_argument("--nproc-per-node", type=int, default=1, help="GPUs per run; above 1 each run goes via torchrun")
    p.add_argument("--out", type=Path, help="report and runs folder (default runs/compare_<UTC time>_<A>_vs_<B>)")
    args, extra = p.parse_known_args(argv)
    if args.runs < 2:
        p.error(f"--runs {args.runs}: a comparison needs at least 2 runs of each submission to estimate noise")
    if args.nproc_per_node < 1:
        p.error(f"--nproc-per-node must be positive, got {args.nproc_per_node}")
    if args.depths is not None:
        try:
            args.depth_list = [int(d) for d in args.depths.split(",")]
        except ValueError:
            p.error(f"--depths {args.depths!r}: give whole numbers separated by commas, e.g. --depths 2,4")
        if len(set(args.depth_list)) != len(args.depth_list) or min(args.depth_list) < 1:
            p.error(f"--depths {args.depths!r}: give distinct positive depths, e.g. --depths 2,4")
    else:
        args.depth_list = [args.depth]
    owned = [flag for flag in extra if flag.split("=")[0] in OWNED_FLAGS]
    if owned:
        p.error(f"{', '.join(owned)}: set by this command for each run; use its own --out, --seed, --depth(s)")
    # Check the pass-through flags with the harness's own parser now, not after the first run fails on them.
    try:
        harness_parse_args([args.a, *extra])
    except SystemExit:
        p.error(f"harness.run refused the pass-through flags {extra} (its message is above)")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))

    # ---- both submissions must load before any run: a contract error fails here, in seconds
    loaded = {}
    for side, spec in (("a", args.a), ("b", args.b)):
        try:
            sub = load_submission(spec)
        except SubmissionError as exc:
            print(f"error: submission {side.upper()} ({spec}): {exc}", file=sys.stderr)
            return 2
        loaded[side] = {"spec": spec, "name": sub.name, "path": str(sub.path), "source_digest": sub.source_digest}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("runs") / f"compare_{stamp}_{loaded['a']['name']}_vs_{loaded['b']['name']}"
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} already holds files; pass --out to a new folder (or delete that one)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    # ---- the runs, interleaved
    specs = plan_runs(args.a, args.b, args.depth_list, args.runs, args.seed, out)
    print(f"comparing A = {args.a} and B = {args.b}: {len(specs)} runs, logs in {out / 'logs'}", flush=True)
    for i, spec in enumerate(specs, 1):
        started = time.perf_counter()
        try:
            spec.record = execute(spec, harness_command(spec, args.profile, args.nproc_per_node, extra))
        except CompareError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # the running harness got the same SIGINT and wrote an `interrupted` record
            print(f"\ninterrupted during run {i}/{len(specs)}; finished runs are in {out / 'runs'}", file=sys.stderr)
            return 130
        m = spec.record.metrics
        print(
            f"[{i}/{len(specs)}] {spec.out.name}: training {spec.record.training_time_s:.2f} s, "
            f"final loss {_num(m.final_loss)}, val_bpb {_num(m.val_bpb)} "
            f"({time.perf_counter() - started:.0f} s wall)",
            flush=True,
        )

    # ---- statistics per depth, then across depths
    per_depth: dict[int, list[Row]] = {}
    for depth in args.depth_list:
        side = {s: [x.record for x in specs if x.depth == depth and x.side == s] for s in "AB"}
        side = {s: sorted(records, key=lambda r: r.run.seed) for s, records in side.items()}  # pairs align
        per_depth[side["A"][0].run.depth] = compare_runs(side["A"], side["B"])
    transfers = []
    if len(per_depth) > 1:
        names = [row.metric for row in next(iter(per_depth.values()))]
        for name in names:
            rows = {d: next((r for r in rows if r.metric == name), None) for d, rows in per_depth.items()}
            if all(rows.values()):
                transfers.append(transfer_verdict(rows))
    first = specs[0].record
    meta = {
        "a": loaded["a"],
        "b": loaded["b"],
        "profile": first.profile,
        "hardware": profiles.describe_hardware(first.fingerprint),
        "runs": args.runs,
        "seeds": [args.seed + i for i in range(args.runs)],
        "harness_args": extra,
        "nproc_per_node": args.nproc_per_node,
        "eligibility": eligibility([spec.record for spec in specs]),
    }
    markdown = render_markdown(meta, per_depth, transfers)
    (out / "compare.md").write_text(markdown, encoding="utf-8")
    report = report_json(meta, specs, per_depth, transfers)
    (out / "compare.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print()
    print(markdown)
    print(f"report: {out / 'compare.md'} and {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

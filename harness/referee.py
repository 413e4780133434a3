"""The one place a run's validity is decided: ``judge(record) -> Verdict``.

    verdict = judge(Record.read(Path("runs/x/record.json")))
    verdict.eligible, verdict.reasons        # True and () for a run that can set a record

A pure function of the record: the referee calls it when a run ends, ``leaderboard add`` calls it again on the
record it is given (and refuses one whose stored verdict disagrees), and ``harness.compare`` calls it to say
whether the runs it compared could count (``harness.ci`` measures time to a target on development profiles, where
no run is eligible: it judges regressions, not validity). Checks that need several records at once (the same
data, tokenizer, bundle, harness and source across an entry's runs, distinct seeds, the track's pins) are the
leaderboard's, in ``leaderboard/store.py``; checks of the run against its own observation (the clocks, the
warm-up proof, the file watch) are made while the run happens (``harness/run.py``) and fail the run outright.
What the rules are and why: docs/rules.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from harness.profiles import PROFILES, Profile
from harness.record import Record, Verdict
from harness.stats import NAN, Comparison, Summary, compare_samples, one_sample_greater, summarize

RECORD_PROFILE = "8xh100"
CLOCK_TOLERANCE = (0.02, 2.0)  # the worker's and the referee's clocks may differ by 2% or 2 s, whichever is larger


def judge(record: Record) -> Verdict:
    """Why this run cannot set a record (no reasons: it can)."""
    reasons = []
    if record.status != "finished":
        reasons.append(f"the run did not finish (status {record.status})")
    profile = PROFILES.get(record.profile)
    if profile is None or not profile.record_eligible:
        reasons.append(f"profile {record.profile!r} is not the record profile ({RECORD_PROFILE})")
    else:
        reasons += calibration_shortfalls(profile, record.calibration)
    if record.resumed:
        reasons.append("resumed from a checkpoint")
    max_steps = (record.config or {}).get("max_steps")
    if profile is not None and max_steps not in (None, profile.max_steps):
        reasons.append(f"--max-steps {max_steps} caps the planned training")
    bundle = record.eval_bundle
    if bundle is None or record.metrics.core_label is None:
        reasons.append("CORE not evaluated (--no-core, or the run stopped before it)")
    else:
        if bundle.missing_labels:
            reasons.append(f"eval bundle is partial (missing {', '.join(bundle.missing_labels)})")
        if bundle.max_per_task not in (None, -1):
            reasons.append("CORE evaluated on a per-task cap, not on every record")
    data = record.data
    if data is not None:
        reasons += data.not_eligible or []
        if not data.pinned and not data.not_eligible:
            reasons.append(
                f"dataset {data.dataset!r} has shards without committed digests (python -m harness.data pin)"
            )
    if record.harness.dirty:
        changed = record.harness.changed
        reasons.append(
            f"uncommitted changes in {', '.join(changed[:5])}" if changed else "the harness has uncommitted changes"
        )
    for name, used in sorted((record.budgets or {}).items()):
        if used["seconds"] > used["budget"]:
            reasons.append(
                f"untimed phase {name} took {used['seconds']:.1f} s, over its budget of {used['budget']:.1f} s"
            )
    left = (record.watch or {}).get("left_behind", 0)
    if left:
        reasons.append(f"the worker left {left} processes running after it exited (ended by the referee)")
    return Verdict(eligible=not reasons, reasons=tuple(reasons))


def calibration_shortfalls(profile: Profile, calibration: dict) -> list[str]:
    """A node slower than the profile's calibration floors is not a fair one."""
    reasons = []
    tflops, gbps = calibration.get("matmul_tflops", 0.0), calibration.get("memory_gbps", 0.0)
    if tflops < profile.min_matmul_tflops:
        reasons.append(
            f"matmul calibration {tflops} TFLOP/s is below the {profile.name} floor of {profile.min_matmul_tflops}"
        )
    if gbps < profile.min_memory_gbps:
        reasons.append(f"memory calibration {gbps} GB/s is below the {profile.name} floor of {profile.min_memory_gbps}")
    return reasons


# ------------------------------------------------------------------------------------------------
# The acceptance rule for a new record (leaderboard/README.md gives the reasons for each number)

MIN_RUNS = 5  # runs (distinct seeds) an entry needs before it can be judged
ALPHA = 0.05  # significance level of both one-sided tests (CORE above target, time below record)
MIN_SPEEDUP = 1.01  # mean time must be at least 1% below the record's: node-to-node spread exceeds run noise


@dataclass(frozen=True)
class Assessment:
    """Everything the board shows about one entry, and its verdict under the acceptance rule.

    time_h, core and val_bpb summarise the runs that have the value (a missing time, CORE or val_bpb is left
    out, so n can differ per metric; None when no run has it). vs_record compares the record's times (a) with
    this entry's (b), so its ratio is the speedup and p_greater the one-sided p-value that this entry is faster.
    """

    time_h: Summary | None
    core: Summary | None
    val_bpb: Summary | None
    core_t: float
    core_p: float
    vs_record: Comparison | None
    qualifies: bool  # meets the CORE part of the rule (enough runs, mean CORE significantly above target)
    beats_record: bool  # qualifies and is significantly and sufficiently faster than the record it was judged against
    verdict: str  # short human reason, for the status column


def assess(
    times_s: Sequence[float | None],
    cores: Sequence[float | None],
    val_bpbs: Sequence[float | None],
    target: float,
    record_times_s: Sequence[float] | None = None,
) -> Assessment:
    """Apply the acceptance rule to one entry's runs (one value per run in each sequence; None: missing).

    record_times_s: training times of the record in force when this entry was filed; None for the first entry
    of a track, which then only has to clear the CORE part of the rule. A run missing its time or its CORE
    keeps the entry from qualifying.
    """
    present_time = [t for t in times_s if t is not None]
    present_core = [c for c in cores if c is not None]
    present_bpb = [v for v in val_bpbs if v is not None]
    time_h = summarize([t / 3600 for t in present_time]) if present_time else None
    core = summarize(present_core) if present_core else None
    val_bpb = summarize(present_bpb) if present_bpb else None
    core_t, core_p = one_sample_greater(present_core, target) if present_core else (NAN, NAN)
    compared = record_times_s is not None and present_time
    vs_record = compare_samples(record_times_s, present_time) if compared else None

    n = len(times_s)
    if n < MIN_RUNS:
        verdict, qualifies = f"needs {MIN_RUNS} runs, has {n}", False
    elif len(present_time) < n:
        verdict, qualifies = f"training time missing in {n - len(present_time)} of {n} runs", False
    elif len(present_core) < n:
        verdict, qualifies = f"CORE missing in {n - len(present_core)} of {n} runs", False
    elif not core_p < ALPHA:
        verdict, qualifies = f"mean CORE not above {target} (p={_p(core_p)})", False
    else:
        verdict, qualifies = "", True
    beats = False
    if qualifies:
        if vs_record is None:
            beats, verdict = True, "first record of the track"
        elif not vs_record.p_greater < ALPHA:
            verdict = f"not faster than the record (p={_p(vs_record.p_greater)})"
        elif not vs_record.ratio >= MIN_SPEEDUP:
            verdict = f"speedup {vs_record.ratio:.4f} below the {MIN_SPEEDUP} margin"
        else:
            beats, verdict = True, f"faster than the record ({vs_record.ratio:.3f}x, p={_p(vs_record.p_greater)})"
    return Assessment(time_h, core, val_bpb, core_t, core_p, vs_record, qualifies, beats, verdict)


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2g}"

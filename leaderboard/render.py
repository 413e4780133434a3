"""Regenerate everything the leaderboard shows from the stored records: run ``python -m leaderboard render``.

    render()            # leaderboard/README.md table, dev/README.md table, each entry's stats.md, index.html

Every number comes from ``harness.stats`` applied to the runs under ``records/`` (and ``dev/records/``)
plus the reference rows in ``reference.json``; nothing is typed in by hand. Output is deterministic: no
clock, no randomness, sorted keys, so the same records give byte-identical files (a test checks it).

Entries are judged in filing order: each against the record in force when it was filed, so a later entry
never changes an earlier verdict except to mark a record "former record" once it is beaten. An entry that meets
the acceptance rule becomes the record only once ``python -m leaderboard verify`` has reproduced it (until then
it is "pending verification", and later entries are judged against the record before it).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from harness import referee, stats
from harness.markdown import markdown_table
from leaderboard.store import PACKAGE_DIR, TRACK_DIRS, Entry, LeaderboardError, record_track_checks

REFERENCE_PATH = PACKAGE_DIR / "reference.json"
RECORD_COLUMNS = [
    "#",
    "time (h)",
    "CORE (mean ± sd, n)",
    "val_bpb",
    "description",
    "date",
    "commit",
    "contributors",
    "status",
]
DEV_COLUMNS = ["#", "profile", *RECORD_COLUMNS[1:]]
DASH = "-"


@dataclass
class Judged:
    """An entry with its statistics, its status on the board and the record it was judged against."""

    entry: Entry
    number: int
    assessment: referee.Assessment
    status: str
    against: Entry | None  # the record in force when it was filed (record track only)
    partial: bool = False  # CORE is core_partial (development board only)
    holds_record: bool = False  # set a record: met the acceptance rule and was verified (record track only)


def load_reference() -> dict:
    return json.loads(REFERENCE_PATH.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Judging


def finite(value: object) -> float | None:
    """A number read from a record, or None when it is missing or not finite. Records written before strict JSON
    may hold NaN or Infinity (Python's json reads them); strict records hold null and a ``non_finite`` note.
    Either way the board shows the value as missing and renders."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _metric(entry: Entry, key: str) -> list[float | None]:
    return [finite(getattr(run.record.metrics, key)) for run in entry.runs]


def _times(entry: Entry) -> list[float | None]:
    return [finite(run.record.training_time_s) for run in entry.runs]


def verification_note(entry: Entry) -> str:
    """What the board says of an entry's verification: "verified", "verification failed" or "" (none yet)."""
    v = entry.verification
    if v is None:
        return ""
    return "verified" if v.get("verified") is True else "verification failed"


def judge_record_track(entries: list[Entry], target: float, first_number: int) -> list[Judged]:
    judged: list[Judged] = []
    record: Judged | None = None
    for i, entry in enumerate(entries):
        times = _times(entry)
        record_times = _times(record.entry) if record else None
        a = referee.assess(times, _metric(entry, "core"), _metric(entry, "val_bpb"), target, record_times)
        item = Judged(entry, first_number + i, a, a.verdict, record.entry if record else None)
        note = verification_note(entry)
        if a.beats_record and note == "verified":
            if record is not None:
                record.status = f"former record ({record.assessment.verdict}; verified)"
            item.status, item.holds_record = f"record ({a.verdict}; verified)", True
            record = item
        elif a.beats_record:
            item.status = f"{'verification failed' if note else 'pending verification'} ({a.verdict})"
        elif note:
            item.status = f"{a.verdict}; {note}"
        judged.append(item)
    return judged


def judge_dev_board(entries: list[Entry], target: float) -> list[Judged]:
    judged = []
    for i, entry in enumerate(entries):
        cores = _metric(entry, "core")
        partial = any(c is None for c in cores)
        if partial:
            cores = _metric(entry, "core_partial")
        a = referee.assess(_times(entry), cores, _metric(entry, "val_bpb"), target)
        why = sorted({c.name for run in entry.runs for c in record_track_checks(run.record) if not c.passed})
        status = f"development ({', '.join(why)})" if why else "development (record-eligible runs filed here)"
        note = verification_note(entry)
        status += f"; {note}" if note else ""
        judged.append(Judged(entry, i + 1, a, status, None, partial))
    return judged


# ---------------------------------------------------------------------------------------------------------------
# Cells and tables


def _num(x: float | None, digits: int) -> str:
    return DASH if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _pval(p: float) -> str:
    return DASH if math.isnan(p) else f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def _mean_sd(s: stats.Summary | None, digits: int, with_n: bool = False) -> str:
    if s is None:
        return DASH
    text = _num(s.mean, digits) if math.isnan(s.sd) else f"{_num(s.mean, digits)} ± {_num(s.sd, digits)}"
    return f"{text} (n={s.n})" if with_n else text


def _cell_text(text: object) -> str:
    """User text (names, descriptions, contributors) on one line; escaped later for markdown or HTML."""
    return " ".join(str(text).split()) or DASH


# User text in generated markdown shows as written: '\\' and '|' could split a table cell, '<' open an HTML comment or
# tag (a fake '<!-- leaderboard:table:end -->' marker would break the next render), '&' an entity, and '*', '_',
# '`', '~', '[', ']' format it ('__init__' would turn bold). Each is escaped; '_' only where it could format,
# not inside a word (GFM never reads 'd24_baseline' as emphasis), so folder names stay readable in the source.
MARKDOWN_SPECIAL = re.compile(r"[\\|*`~\[\]]|(?<![^\W_])_|_(?![^\W_])")
MARKDOWN_ENTITIES = {"<": "&lt;", "&": "&amp;"}


def md(text: object) -> str:
    """``text`` as one line of markdown that shows as written, in a table cell or a list item."""
    line = MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(), _cell_text(text))
    return re.sub("[<&]", lambda m: MARKDOWN_ENTITIES[m.group()], line)


def _entry_row(j: Judged, link: str | None) -> dict:
    """An entry's cells: markdown, with the description linking to ``link`` (its stats.md), when a link is given;
    plain text for the web page (``html_table`` escapes it) when not."""
    meta = j.entry.meta
    text = md if link else _cell_text
    core = _mean_sd(j.assessment.core, 4, with_n=True)
    # The link is URL-quoted: an old entry's folder name may hold any character, a newline included.
    description = f"{md(meta['description'])} ([stats]({quote(link)}))" if link else _cell_text(meta["description"])
    return {
        "#": str(j.number),
        "time (h)": _mean_sd(j.assessment.time_h, 3),
        "CORE (mean ± sd, n)": f"{core} partial" if j.partial and core != DASH else core,
        "val_bpb": _mean_sd(j.assessment.val_bpb, 5),
        "description": description,
        "date": text(meta["date"]),
        "commit": text((meta.get("commit") or DASH)[:10]),
        "contributors": text(", ".join(map(str, meta["contributors"]))),
        "status": text(j.status),
    }


def reference_frame(reference: dict, markdown: bool = True) -> pd.DataFrame:
    text = md if markdown else _cell_text
    rows = [
        {
            "#": str(i),
            "time (h)": f"{row['time_h']:g}",
            "CORE (mean ± sd, n)": f"{row['core']:.4f} (reported)",
            "val_bpb": _num(row["val_bpb"], 5),
            "description": text(row["description"]),
            "date": text(row["date"]),
            "commit": DASH,
            "contributors": text(row["contributors"]),
            "status": text(reference["status"]),
        }
        for i, row in enumerate(reference["rows"])
    ]
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


def record_frame(judged: list[Judged], reference: dict, markdown: bool = True) -> pd.DataFrame:
    """The record track's table: reference rows, then the entries. ``markdown``: cells escaped for a markdown
    table and descriptions linking to stats.md; else plain text for the web page."""
    rows = [
        _entry_row(j, f"{TRACK_DIRS['record'].as_posix()}/{j.entry.path.name}/stats.md" if markdown else None)
        for j in judged
    ]
    ours = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    ref = reference_frame(reference, markdown)
    return pd.concat([ref, ours], ignore_index=True) if rows else ref


def dev_frame(judged: list[Judged], markdown: bool = True) -> pd.DataFrame:
    rows = []
    for j in judged:
        row = _entry_row(j, f"records/{j.entry.path.name}/stats.md" if markdown else None)  # from dev/README.md
        profiles = ", ".join(sorted({str(run.record.profile) for run in j.entry.runs}))
        row["profile"] = md(profiles) if markdown else _cell_text(profiles)
        rows.append(row)
    return pd.DataFrame(rows, columns=DEV_COLUMNS)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table of ``df``, whose cells are markdown already (user text escaped with ``md``, so no
    text splits a row or a cell); pandas' own to_markdown would need the tabulate package."""
    return markdown_table(list(df.columns), df.itertuples(index=False)) + "\n"


def replace_between(text: str, marker: str, content: str, path: Path) -> str:
    start, end = f"<!-- leaderboard:{marker}:start -->", f"<!-- leaderboard:{marker}:end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise LeaderboardError(f"{path} needs exactly one '{start}' followed by one '{end}'; restore them from git")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{content}{end}{tail}"


def rule_text(reference: dict) -> str:
    return (
        f"In force (from `harness/referee.py`): at least **{referee.MIN_RUNS}** runs with distinct seeds; "
        f"mean CORE above **{reference['target']['core']}** by a one-sided one-sample t-test with "
        f"**p < {referee.ALPHA}**; and, when a record exists, mean training time below it by Welch's one-sided "
        f"t-test with **p < {referee.ALPHA}** and a speedup of at least **{referee.MIN_SPEEDUP}x**. An entry that "
        "meets it becomes the record once `python -m leaderboard verify` has re-run its runs and reproduced them.\n"
    )


# ---------------------------------------------------------------------------------------------------------------
# Per-entry stats.md


def stats_markdown(j: Judged, target: float) -> str:
    e, a = j.entry, j.assessment
    meta = e.meta
    rows = []
    for run in e.runs:
        rec, time_s = run.record, finite(run.record.training_time_s)
        rows.append(
            {
                "seed": md(run.seed),
                "status": md(rec.status),
                "profile": md(rec.profile),
                "time (h)": _num(None if time_s is None else time_s / 3600, 4),
                "CORE": _num(finite(rec.metrics.core), 4),
                "core_partial": _num(finite(rec.metrics.core_partial), 4),
                "val_bpb": _num(finite(rec.metrics.val_bpb), 5),
                "steps": md(rec.steps_completed),
                "started": md(rec.started_at),
            }
        )
    runs = pd.DataFrame(rows)
    summary_rows = []
    for label, s, digits in (
        ("time (h)", a.time_h, 4),
        ("CORE" + (" (partial)" if j.partial else ""), a.core, 4),
        ("val_bpb", a.val_bpb, 5),
    ):
        if s is not None:
            summary_rows.append(
                {
                    "metric": label,
                    "n": str(s.n),
                    "mean": _num(s.mean, digits),
                    "sd": _num(s.sd, digits),
                    "95% CI": f"[{_num(s.ci_low, digits)}, {_num(s.ci_high, digits)}]",
                }
            )
    # Every line from entry.json is one escaped line (md): a description cannot add a list item or a heading.
    out = [
        f"# {md(meta['name'])} ({e.track} track)\n",
        "Generated by `python -m leaderboard render` from the records in this folder; do not edit.\n",
        f"- description: {md(meta['description'])}",
        f"- date: {md(meta['date'])}; harness commit: {md(meta.get('commit') or DASH)}; "
        f"contributors: {md(', '.join(map(str, meta['contributors'])))}",
        f"- submission: {md(meta['submission'])} (source digest {md(meta['source_digest'])})",
        f"- status: {md(j.status)}\n",
        "## Runs\n",
        markdown(runs),
        "## Summary (mean, sample sd, 95% t-interval)\n",
        markdown(pd.DataFrame(summary_rows, columns=["metric", "n", "mean", "sd", "95% CI"])),
        "## CORE against the target\n",
        f"One-sided one-sample t-test, H1: mean CORE > {target}: t = {_num(a.core_t, 3)}, "
        f"df = {a.core.n - 1 if a.core and a.core.n > 1 else DASH}, p = {_pval(a.core_p)}.\n",
    ]
    out += verification_markdown(e)
    if e.track == "record":
        out.append("## Time against the record in force when filed\n")
        c = a.vs_record
        if c is None or j.against is None:
            out.append("No record was in force: the first record of the track is judged on CORE alone.\n")
        else:
            h = 1 / 3600
            out.append(
                f"Record: {md(j.against.meta['name'])} ({md(j.against.path.name)}). Welch's t-test on training time, "
                f"record minus this entry: difference {_num(c.diff * h, 4)} h, 95% CI [{_num(c.diff_ci_low * h, 4)}, "
                f"{_num(c.diff_ci_high * h, 4)}] h, t = {_num(c.t, 3)}, df = {_num(c.df, 1)}, p (this entry "
                f"faster, one-sided) = {_pval(c.p_greater)}, p (two-sided) = {_pval(c.p_value)}. Speedup "
                f"(record mean / this mean) {_num(c.ratio, 4)}x, 95% Fieller CI [{_num(c.ratio_ci_low, 4)}, "
                f"{_num(c.ratio_ci_high, 4)}].\n"
            )
    return "\n".join(out)


def verification_markdown(entry: Entry) -> list[str]:
    """The entry's latest verification: every rule of every re-run, or how to verify it."""
    v = entry.verification
    out = ["## Verification\n"]
    if v is None:
        name = md(entry.path.name)
        return [*out, f"Not verified yet: python -m leaderboard verify {name} re-runs its runs and compares.\n"]
    done = ", ".join(md(r.get("seed")) for r in v.get("runs", []))
    verdict = "reproduced its record" if v.get("verified") is True else "did not reproduce its record"
    out.append(f"{md(v.get('date'))}: re-ran seed(s) {done}, which {verdict}.")
    if v.get("stale"):
        out.append(f"It no longer counts: {md(v['stale'])}.")
    out.append("")
    for run in v.get("runs", []):
        rows = [{k: md(r.get(k)) for k in ("what", "recorded", "replayed", "rule")} | {"ok": "yes" if r.get("ok")
                 else "NO"} for r in run.get("rows", [])]  # fmt: skip
        out.append(f"### seed {md(run.get('seed'))}\n")
        if run.get("problem"):
            out.append(md(str(run["problem"]).splitlines()[0]) + "\n")
        if rows:
            out.append(markdown(pd.DataFrame(rows, columns=["what", "recorded", "replayed", "rule", "ok"])))
    return out


def html_table(df: pd.DataFrame, table_id: str) -> str:
    """A table for the web page (a frame built with ``markdown=False``); every cell HTML-escaped."""
    return df.to_html(index=False, escape=True, table_id=table_id, classes="board", border=0)

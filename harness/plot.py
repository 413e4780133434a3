"""Plot runs side by side: training loss and val_bpb against step and against training time, overlaid across runs,
with the learning-rate multiplier where the runs logged it.

    python -m harness.plot runs/A                          # writes runs/A/plot.png and runs/A/plot.html
    python -m harness.plot runs/A runs/B runs/C --out /tmp/plots

Reads each run directory's events.jsonl and record.json (``harness/curves.py`` says what is read), and writes
``plot.png`` (matplotlib: four panels, for a README or a pull request) and ``plot.html`` (the same four charts,
interactive: values under the cursor, series toggled from the legend; self-contained, opens from disk) into
``--out`` (default: the first run directory). Training time is the harness clock's: only timed steps count.
"""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path

from harness.curves import CurvesError, Point, RunCurves, read_run_curves
from harness.fileio import atomic_path, atomic_write_text
from harness.webpage import CHARTS_JS, UPLOT_CSS, UPLOT_JS, fill, script_json

TEMPLATE = Path(__file__).resolve().parent / "templates" / "plot.html"
PNG_NAME, HTML_NAME = "plot.png", "plot.html"
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def time_unit(max_seconds: float) -> tuple[str, float]:
    """The unit that keeps the numbers of a time axis short (the page's charts.js picks the same)."""
    if max_seconds >= 2 * 3600:
        return "h", 3600.0
    if max_seconds >= 120:
        return "min", 60.0
    return "s", 1.0


def labels_for(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name, or its path as given where two runs share a name."""
    names = [d.name or str(d) for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs, strict=True)]


def write_png(runs: list[RunCurves], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    times = [p.time_s for r in runs for p in r.loss + r.val_bpb if p.time_s is not None]
    unit, seconds = time_unit(max(times, default=0.0))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained")
    panels = [
        (axes[0][0], "loss", "step", "training loss"),
        (axes[0][1], "loss", "time", "training loss"),
        (axes[1][0], "val_bpb", "step", "val_bpb"),
        (axes[1][1], "val_bpb", "time", "val_bpb"),
    ]
    for ax, metric, against, ylabel in panels:
        lr_axis = None
        for i, run in enumerate(runs):
            color = COLORS[i % len(COLORS)]
            xy = _xy(getattr(run, metric), against, seconds)
            if xy[0]:
                ax.plot(*xy, color=color, label=run.label, marker="o" if len(xy[0]) <= 30 else None, markersize=3)
            lr = _xy(run.lr_mult, against, seconds) if metric == "loss" else ([], [])
            if lr[0]:
                lr_axis = lr_axis or ax.twinx()
                lr_axis.plot(*lr, color=color, linestyle="--", alpha=0.6, label=f"{run.label} lr multiplier")
        ax.set_xlim(left=0)  # training starts at step 0, time 0
        if against == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step" if against == "step" else f"training time ({unit})")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} against {'step' if against == 'step' else 'training time'}")
        ax.grid(alpha=0.3)
        if lr_axis is not None:
            lr_axis.set_ylabel("lr multiplier (dashed)")
            lr_axis.set_ylim(bottom=0)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, f"no {metric} points in these runs", ha="center", va="center", transform=ax.transAxes)
    if not any(run.lr_mult for run in runs):
        fig.suptitle("(the runs logged no learning-rate multiplier)", fontsize="small", color="#666")
    fig.savefig(path, dpi=110, format="png")  # the temporary name has no .png suffix
    plt.close(fig)


def _xy(points: list[Point], against: str, seconds: float) -> tuple[list[float], list[float]]:
    usable = [p for p in points if against == "step" or p.time_s is not None]
    xs = [p.step if against == "step" else p.time_s / seconds for p in usable]
    return xs, [p.value for p in usable]


def page_html(runs: list[RunCurves], title: str) -> str:
    def rows(points: list[Point]) -> list[list]:
        return [[p.step, p.value, p.time_s] for p in points]

    data = {
        "runs": [
            {"label": r.label, "loss": rows(r.loss), "val_bpb": rows(r.val_bpb), "lr_mult": rows(r.lr_mult)}
            for r in runs
        ]
    }
    lr_note = "" if any(r.lr_mult for r in runs) else " The runs logged no learning-rate multiplier."
    note = (
        f"{len(runs)} run(s). Training time is the harness clock's (timed steps only). Hover for values; click a "
        f"legend entry to hide its line.{lr_note}"
    )
    return fill(
        TEMPLATE.read_text(encoding="utf-8"),
        {
            "TITLE": escape(title),
            "NOTE": escape(note),
            "UPLOT_CSS": UPLOT_CSS,
            "UPLOT_JS": UPLOT_JS,
            "CHARTS_JS": CHARTS_JS,
            "DATA": script_json(data),
        },
    )


def plot_runs(run_dirs: list[str | Path], out: str | Path | None = None) -> tuple[Path, Path]:
    """Write plot.png and plot.html for ``run_dirs`` into ``out`` (default: the first run directory)."""
    dirs = [Path(d) for d in run_dirs]
    runs = [read_run_curves(d, label) for d, label in zip(dirs, labels_for(dirs), strict=True)]
    out = Path(out) if out is not None else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    png, html = out / PNG_NAME, out / HTML_NAME
    with atomic_path(png) as tmp:
        write_png(runs, tmp)
    atomic_write_text(html, page_html(runs, f"Runs: {', '.join(r.label for r in runs)}"))
    return png, html


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each holds events.jsonl, record.json)")
    p.add_argument("--out", type=Path, help=f"folder for {PNG_NAME} and {HTML_NAME} (default: the first run's)")
    args = p.parse_args(argv)
    try:
        for path in plot_runs(args.runs, args.out):
            print(f"wrote {path}")
    except CurvesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m harness.plot` and the curves it reads (harness/curves.py), on real run directories.

    pytest tests/test_plot.py
    PLOT_SCREENSHOT=plot-page.png pytest tests/test_plot.py      # keep a screenshot of plot.html

The runs are two real CPU runs of the harness (tests/fixtures/runs, README there). They log no learning-rate
multiplier; the run that does is the 32-step one with its train_loss lines rewritten in the form the harness is
to write ({"loss", "lr_mult", "training_time_s"}), the multiplier being the reference schedule's own. plot.html is
opened in a real headless Chromium (tests/helpers_browser.py).
"""

from __future__ import annotations

import json
import os
import shutil
from itertools import accumulate
from pathlib import Path

import pytest
from helpers_browser import chart_data, open_page, points
from PIL import Image

from baselines.nanochat.schedule import lr_multiplier
from harness.curves import CurvesError, read_run_curves, run_curves, thin
from harness.plot import main

RUNS = Path(__file__).resolve().parent / "fixtures" / "runs"
SHORT, LONG = RUNS / "climbmix_d4_6steps", RUNS / "climbmix_d2_32steps"


def record_of(run: Path) -> dict:
    return json.loads((run / "record.json").read_text())


def events_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def step_times(run: Path) -> list[float]:
    return next(e["value"] for e in events_of(run) if e["event"] == "step_times")


def with_lr_logged(run: Path, dest: Path) -> Path:
    """A copy of ``run`` whose train_loss and val_bpb lines carry the training time, and train_loss lines the
    schedule's lr multiplier; without the step_times line, so that the times can only come from those."""
    dest.mkdir(parents=True)
    shutil.copyfile(run / "record.json", dest / "record.json")
    steps = record_of(run)["plan"]["num_steps"]
    ends = list(accumulate(step_times(run)))
    lines = []
    for e in events_of(run):
        if e["event"] == "train_loss":
            step = e["key"]
            e["value"] = {"loss": e["value"], "lr_mult": lr_multiplier(step, steps), "training_time_s": ends[step]}
        if e["event"] == "val_bpb":
            e["value"] = {"val_bpb": e["value"], "training_time_s": ends[e["key"] - 1]}
        if e["event"] != "step_times":  # the time now comes with each loss
            lines.append(json.dumps(e) + "\n")
    (dest / "events.jsonl").write_text("".join(lines))
    return dest


# ---------------------------------------------------------------------------------------------------------------
# What is read


def test_a_real_runs_curves_are_its_logged_losses_at_the_clocks_training_time():
    curves = read_run_curves(SHORT)
    record = record_of(SHORT)
    assert [[p.step, p.value] for p in curves.loss] == record["loss_curve"]
    assert [p.time_s for p in curves.loss] == pytest.approx(list(accumulate(step_times(SHORT))))
    assert curves.loss[-1].time_s == pytest.approx(record["training_time_s"], abs=1e-4)  # the clock's own total
    [bpb] = curves.val_bpb
    assert (bpb.step, bpb.value) == (6, record["metrics"]["val_bpb"])
    assert bpb.time_s == pytest.approx(record["training_time_s"], abs=1e-4)  # evaluated after the sixth step
    assert curves.lr_mult == [] and curves.label == "climbmix_d4_6steps"


def test_val_bpb_during_training_is_placed_at_the_time_of_its_step():
    curves = read_run_curves(LONG)
    ends = list(accumulate(step_times(LONG)))
    assert [(p.step, p.value) for p in curves.val_bpb] == [(e["step"], e["val_bpb"]) for e in record_of(LONG)["evals"]]
    assert [p.time_s for p in curves.val_bpb] == pytest.approx([ends[29], ends[31]])


def test_the_lr_multiplier_and_training_times_are_read_from_event_objects(tmp_path):
    curves = read_run_curves(with_lr_logged(LONG, tmp_path / "lr"))
    assert [p.value for p in curves.lr_mult] == [lr_multiplier(s, 32) for s in range(32)]
    assert [p.time_s for p in curves.loss] == pytest.approx(list(accumulate(step_times(LONG))))
    assert [p.value for p in curves.loss] == [loss for _, loss in record_of(LONG)["loss_curve"]]
    ends = list(accumulate(step_times(LONG)))
    assert [(p.step, p.time_s) for p in curves.val_bpb] == [(30, ends[29]), (32, ends[31])]


def test_without_an_event_log_the_records_curves_are_used_without_times(tmp_path):
    (tmp_path / "record.json").write_bytes((SHORT / "record.json").read_bytes())
    curves = read_run_curves(tmp_path)
    assert [[p.step, p.value] for p in curves.loss] == record_of(SHORT)["loss_curve"]
    assert {p.time_s for p in curves.loss} == {None} and len(curves.val_bpb) == 1


def test_a_damaged_record_is_named_with_the_fix_and_plot_exits_2(tmp_path, capsys):
    (tmp_path / "record.json").write_text("[1, 2]")  # a JSON list, not the record the harness writes
    with pytest.raises(CurvesError, match=r"record.json holds a JSON list, expected an object; the record is damaged"):
        read_run_curves(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "the record is damaged" in capsys.readouterr().err


def test_non_finite_losses_are_left_out_and_long_logs_thinned_keeping_both_ends():
    loss = {s: float("nan") if s == 3 else 1.0 / (s + 1) for s in range(1001)}  # step 3 diverged
    events = [{"event": "train_loss", "key": s, "value": v} for s, v in loss.items()]
    events.append({"event": "train_loss", "key": 1001, "value": None})  # strict JSON's null for a NaN
    curve = thin(run_curves(None, events).loss, 400)
    steps = [p.step for p in curve]
    assert len(curve) <= 400 and steps[0] == 0 and steps[-1] == 1000 and 3 not in steps
    assert steps == sorted(steps) and curve[-1].value == pytest.approx(1.0 / 1001)


# ---------------------------------------------------------------------------------------------------------------
# What is written


def test_a_png_and_an_html_page_are_written_for_two_runs(tmp_path, capsys):
    assert main([str(SHORT), str(LONG), "--out", str(tmp_path)]) == 0
    png, html = tmp_path / "plot.png", tmp_path / "plot.html"
    assert capsys.readouterr().out == f"wrote {png}\nwrote {html}\n"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 1000 and image.size[1] > 700
        assert len(image.getcolors(1 << 16) or range(1 << 16)) > 50  # drawn on, not a blank canvas
    assert "climbmix_d4_6steps" in html.read_text() and "<script>" in html.read_text()


def test_the_html_page_overlays_the_runs_against_step_and_training_time(browser, tmp_path):
    main([str(SHORT), str(LONG), "--out", str(tmp_path)])
    page = open_page(browser, tmp_path / "plot.html", width=1400)
    names = ["climbmix_d4_6steps", "climbmix_d2_32steps"]
    loss_step = chart_data(page, "loss-step")
    assert loss_step["labels"] == ["step", *names] and loss_step["xLabel"] == "step"
    for run, series in zip((SHORT, LONG), loss_step["data"][1:], strict=True):
        assert [list(p) for p in points(loss_step["data"][0], series)] == record_of(run)["loss_curve"]
    loss_time = chart_data(page, "loss-time")
    assert loss_time["xLabel"] == "training time (min)"  # the 32-step run trained for over 2 minutes
    ends = [max(x for x, _ in points(loss_time["data"][0], s)) for s in loss_time["data"][1:]]
    assert ends == pytest.approx([record_of(run)["training_time_s"] / 60 for run in (SHORT, LONG)], abs=1e-5)
    bpb = chart_data(page, "bpb-step")
    assert [points(bpb["data"][0], s) for s in bpb["data"][1:]] == [
        [(e["step"], e["val_bpb"]) for e in record_of(run)["evals"]] for run in (SHORT, LONG)
    ]
    assert chart_data(page, "bpb-time")["labels"] == ["training time (min)", *names]
    if os.environ.get("PLOT_SCREENSHOT"):
        page.screenshot(path=os.environ["PLOT_SCREENSHOT"], full_page=True)
    page.close()
    assert page.problems == []


def test_the_lr_multiplier_is_drawn_on_its_own_axis_when_logged(browser, tmp_path):
    run = with_lr_logged(LONG, tmp_path / "with_lr")
    main([str(run), "--out", str(tmp_path / "plot")])
    page = open_page(browser, tmp_path / "plot" / "plot.html")
    chart = chart_data(page, "loss-step")
    assert chart["labels"] == ["step", "with_lr", "with_lr lr multiplier"]
    assert [y for _, y in points(chart["data"][0], chart["data"][2])] == [lr_multiplier(s, 32) for s in range(32)]
    assert page.evaluate("CHARTS.get(document.getElementById('loss-step'))[0].series[2].scale") == "y2"
    page.close()
    assert page.problems == []


def test_run_names_that_look_like_markup_stay_text(browser, tmp_path):
    evil = tmp_path / "</script><!--<script>__DATA__"
    shutil.copytree(SHORT, evil)
    main([str(evil), "--out", str(tmp_path / "plot")])
    page = open_page(browser, tmp_path / "plot" / "plot.html")
    assert chart_data(page, "loss-step")["labels"] == ["step", evil.name]
    assert page.title() == f"Runs: {evil.name}"
    page.close()
    assert page.problems == []


def test_a_folder_that_is_not_a_run_is_refused_naming_it(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}: no events.jsonl or record.json; pass a run directory that harness.run wrote (its --out)\n"
    )
    assert not (tmp_path / "plot.png").exists()

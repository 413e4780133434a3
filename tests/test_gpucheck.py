"""baselines.nanochat.gpucheck's CPU-capable parts at tiny sizes: every section runs (or says why it cannot), the
report is one JSON file, and a failing section is reported without stopping the others.

Run: python -m pytest tests/test_gpucheck.py        (the GPU sizes: python -m baselines.nanochat.gpucheck on a GPU)
"""

import dataclasses
import json

import pytest
import torch

from baselines.nanochat import gpucheck

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def report():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SPEEDRUN_EVAL_BUNDLE", raising=False)
        mp.setattr("evals.bundle.SIBLING_BUNDLE", gpucheck.REPO / "no-bundle-here")  # the synthetic bundle
        return gpucheck.run_check(CPU, gpucheck.SMALL, log=lambda line: None)


def test_every_section_runs_on_cpu_or_says_it_needs_cuda(report):
    sections = report["sections"]
    assert list(sections) == list(gpucheck.SECTIONS)
    assert not [name for name, result in sections.items() if "error" in result]
    assert sections["kernels"]["skipped"].startswith("needs a CUDA GPU")
    assert sections["calibration"]["matmul_tflops"] > 0


def test_train_reports_throughput_and_compile_counters(report):
    train = report["sections"]["train"]
    assert train["steps"] == gpucheck.SMALL.train_steps and train["tokens_per_s"] > 0
    assert train["tokens_per_step"] == gpucheck.SMALL.train_batch_tokens
    assert train["attention_backend"] == "sdpa" and train["compiled"] is False  # CPU default: eager
    assert train["recompiles_after_first_step"] == 0 and train["graph_breaks"] == 0
    assert train["mfu"] is None and train["peak_memory_gib"] is None  # no GPU peak to divide by


def test_memory_reports_the_estimate_of_one_micro_step(report):
    result = report["sections"]["memory"]
    assert result["micro_batch"] == [gpucheck.SMALL.memory_batch, gpucheck.SMALL.seq_len]
    assert result["estimate"]["allocated"] > 0 and result["measured_peak_gib"] is None


def test_attention_matches_the_hand_written_softmax(report):
    for window in gpucheck.SMALL.attention_windows:
        errors = report["sections"]["attention"]["backends"]["sdpa"][f"window_{window}"]["max_abs_error"]
        assert max(errors.values()) < 1e-5


def test_core_paths_agree_and_are_both_timed(report):
    core = report["sections"]["core"]
    assert core["bundle"] == "a synthetic three-task bundle" and core["same_accuracies"]
    assert core["batched"]["records"] == core["one_record"]["records"] == 3 * gpucheck.SMALL.core_records
    assert core["batched"]["records_per_s"] > 0 and core["one_record"]["records_per_s"] > 0


def test_a_failing_section_is_reported_and_the_next_one_still_runs():
    broken = dataclasses.replace(gpucheck.SMALL, core_vocab=10)  # below any tokenizer's minimum
    report = gpucheck.run_check(CPU, broken, sections=("core", "calibration"), log=lambda line: None)
    assert "vocab_size=10 is too small" in report["sections"]["core"]["error"]
    assert "matmul_tflops" in report["sections"]["calibration"]


def test_the_command_writes_one_json_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert gpucheck.main(["--small", "--sections", "calibration,attention", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["sections"]) == ["calibration", "attention"] and report["device"]
    assert f"report in {out}" in capsys.readouterr().out

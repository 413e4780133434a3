"""Tests of the CORE protocol (evals/core.py): prompts, few-shot order, spans, decisions, batching, ranks.

    pytest tests/test_core_eval.py

Prompts are compared with strings written out here (few-shot order from Random(1234 + idx) after the
Random(1337) shuffle); spans and decisions with hand computation on a model whose logits the test sets;
the batched path with the one-record path, and 2 gloo ranks with 1, on the real bundle (40 records per task).
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers_evals import BUNDLE, TinyLM, bundle_text, free_port

from evals.bundle import TaskSpec, resolve_bundle
from evals.core import (
    CoreError,
    Prepared,
    answer_spans,
    centered_score,
    evaluate_batched,
    evaluate_core,
    evaluate_record,
    fewshot_indices,
    load_records,
    prepare_records,
)
from harness.tokenizer import Tokenizer, train_tokenizer

needs_bundle = pytest.mark.skipif(not (BUNDLE / "core.yaml").is_file(), reason=f"no eval bundle at {BUNDLE}")
MISSING = ["hellaswag_zeroshot", "hellaswag", "squad", "coqa"]


class TableModel(torch.nn.Module):
    """Logits at position t are ``table[ids[t]]``: a bigram model whose every logit the test sets."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def spec(task_type: str, num_fewshot: int = 0, delimiter: str = " ", path: Path = Path("unused.jsonl")) -> TaskSpec:
    return TaskSpec("toy", task_type, num_fewshot, delimiter, "toy.jsonl", path, random_baseline=25.0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    if not (BUNDLE / "core.yaml").is_file():
        pytest.skip(f"no eval bundle at {BUNDLE}")
    return train_tokenizer(bundle_text(), vocab_size=1024)


# ------------------------------------------------------------------------------------------------
# Rendering and few-shot order (shuffle Random(1337) of 5 records gives lines [1, 0, 3, 2, 4];
# Random(1234).sample of the 4 others gives positions [4, 1], i.e. lines 4 and 0)


def prompts_of(tok, task, idx):
    (prepared,) = prepare_records(task, load_records(task), [idx], tok)
    return [tok.decode(t[1:]) for t in prepared.tokens], prepared


@needs_bundle
def test_multiple_choice_prompts_equal_the_hand_written_strings(tmp_path, tok):
    rows = [{"query": f"Q{i}?", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(5)]
    task = spec("multiple_choice", num_fewshot=2, delimiter="\nAnswer: ", path=write_jsonl(tmp_path / "mc.jsonl", rows))
    prompts, prepared = prompts_of(tok, task, 0)
    assert prompts == [
        "Q4?\nAnswer: a4\n\nQ0?\nAnswer: a0\n\nQ1?\nAnswer: a1",
        "Q4?\nAnswer: a4\n\nQ0?\nAnswer: a0\n\nQ1?\nAnswer: b1",
    ]
    assert prepared.line == 1 and prepared.gold == 1
    assert all(t[0] == tok.bos_token_id for t in prepared.tokens)


@needs_bundle
def test_schema_prompts_equal_the_hand_written_strings(tmp_path, tok):
    # 4 records shuffle to lines [1, 0, 3, 2]; record 2 (line 3) draws position 3 (line 2, gold option A).
    rows = [
        {"context_options": [f"Opt A{i}", f"Opt B{i}"], "continuation": f"cont {i}.", "gold": i % 2} for i in range(4)
    ]
    task = spec("schema", num_fewshot=1, path=write_jsonl(tmp_path / "schema.jsonl", rows))
    prompts, _ = prompts_of(tok, task, 2)
    assert prompts == ["Opt A2 cont 2.\n\nOpt A3 cont 3.", "Opt A2 cont 2.\n\nOpt B3 cont 3."]


@needs_bundle
def test_language_modeling_prompts_strip_contexts_and_the_prompt_without(tmp_path, tok):
    # Record 1 is line 0; its one shot is position 3, line 2. Contexts are stripped, continuations not,
    # and the whole "without" prompt is stripped (its trailing delimiter space would merge into the answer).
    rows = [{"context": f"  Context {i}\n ", "continuation": f"ans{i}"} for i in range(4)]
    task = spec("language_modeling", num_fewshot=1, path=write_jsonl(tmp_path / "lm.jsonl", rows))
    records = load_records(task)
    (prepared,) = prepare_records(task, records, [1], tok)
    without = tok.encode("Context 2 ans2\n\nContext 0", prepend_bos=True)
    with_ = tok.encode("Context 2 ans2\n\nContext 0 ans0", prepend_bos=True)
    assert prepared.tokens == [with_]
    assert (prepared.starts, prepared.ends) == ([len(without)], [len(with_)])


def test_fewshot_indices_equal_sampling_the_explicit_list_of_other_indices():
    for n, k in [(5, 2), (40, 10), (1000, 10), (11, 10), (4, 3)]:
        for idx in range(0, n, max(1, n // 7)):
            explicit = random.Random(1234 + idx).sample([i for i in range(n) if i != idx], k)
            assert fewshot_indices(idx, n, k) == explicit


def test_fewshot_shrinks_to_the_other_records_when_there_are_fewer_than_k():
    assert sorted(fewshot_indices(1, 3, 10)) == [0, 2]
    assert fewshot_indices(0, 1, 10) == []


# ------------------------------------------------------------------------------------------------
# Spans and decisions, by hand


def test_multiple_choice_span_starts_at_the_common_prefix():
    tokens, starts, ends = answer_spans("multiple_choice", [[9, 1, 2, 3, 4], [9, 1, 2, 5], [9, 1, 7]])
    assert starts == [2, 2, 2] and ends == [5, 4, 3]


def test_schema_span_is_the_common_suffix():
    tokens, starts, ends = answer_spans("schema", [[9, 7, 1, 2, 3], [9, 8, 8, 2, 3]])
    assert starts == [3, 3] and ends == [5, 5]


def test_language_modeling_span_is_the_continuation_and_must_extend_the_prefix():
    tokens, starts, ends = answer_spans("language_modeling", [[9, 1, 2], [9, 1, 2, 3, 4]])
    assert tokens == [[9, 1, 2, 3, 4]] and starts == [3] and ends == [5]
    with pytest.raises(CoreError, match="not a strict prefix"):
        answer_spans("language_modeling", [[9, 1, 2], [9, 1, 5, 3]])


@needs_bundle
def test_multiple_choice_span_of_real_tokens_matches_hand_computation(tmp_path, tok):
    # The split pattern starts a new chunk at " blue" / " green", so the span is exactly those words.
    rows = [{"query": "The sky is", "choices": ["blue", "green"], "gold": 0}]
    task = spec("multiple_choice", path=write_jsonl(tmp_path / "one.jsonl", rows))
    (p,) = prepare_records(task, load_records(task), [0], tok)
    start = 1 + len(tok.encode("The sky is"))
    assert p.starts == [start, start]
    assert p.ends == [start + len(tok.encode(" blue")), start + len(tok.encode(" green"))]


V = 16
BOS = 15


def table_with(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """Log-probability tables: row t gives next-token probabilities (the rest spread evenly)."""
    table = torch.full((V, V), math.log(1 / V))
    for t, probs in rows.items():
        rest = (1 - sum(probs.values())) / (V - len(probs))
        table[t] = math.log(rest)
        for nxt, p in probs.items():
            table[t, nxt] = math.log(p)
    return table


class BosTokenizer:
    bos_token_id = BOS


def both_paths(model, p):
    one = evaluate_record(model, BosTokenizer(), p, "cpu")
    (batched,) = evaluate_batched(model, BosTokenizer(), [p], "cpu", batch_tokens=64)
    return one, batched


def test_multiple_choice_picks_the_lowest_mean_span_loss_by_hand():
    # Option 0 span [6, 8]: -(ln 0.2 + ln 0.9) / 2 = 0.8574; option 1 span [7]: -ln 0.7 = 0.3567.
    model = TableModel(table_with({5: {6: 0.2, 7: 0.7}, 6: {8: 0.9}}))
    p = Prepared(spec("multiple_choice"), 0, 0, 0, [[BOS, 5, 6, 8], [BOS, 5, 7]], [2, 2], [4, 3])
    for result in both_paths(model, p):
        assert result.losses == pytest.approx([-(math.log(0.2) + math.log(0.9)) / 2, -math.log(0.7)], abs=1e-6)
        assert result.prediction == 1 and not result.correct


def test_tied_options_resolve_to_the_first():
    model = TableModel(table_with({5: {6: 0.4, 7: 0.4}}))
    p = Prepared(spec("multiple_choice"), 0, 0, 1, [[BOS, 5, 6], [BOS, 5, 7]], [2, 2], [3, 3])
    for result in both_paths(model, p):
        assert result.prediction == 0 and not result.correct


def test_schema_scores_only_the_common_suffix():
    # Different contexts (3 vs 4) then the same continuation [6, 8]: only P(6|3), P(8|6) vs P(6|4), P(8|6) count.
    model = TableModel(table_with({3: {6: 0.1}, 4: {6: 0.6}, 6: {8: 0.5}}))
    p = Prepared(spec("schema"), 0, 0, 1, [[BOS, 3, 6, 8], [BOS, 4, 6, 8]], [2, 2], [4, 4])
    for result in both_paths(model, p):
        assert result.losses == pytest.approx(
            [-(math.log(0.1) + math.log(0.5)) / 2, -(math.log(0.6) + math.log(0.5)) / 2]
        )
        assert result.prediction == 1 and result.correct


def test_language_modeling_needs_every_greedy_token_to_match():
    p = Prepared(spec("language_modeling"), 0, 0, None, [[BOS, 5, 6, 8]], [2], [4])
    right = TableModel(table_with({5: {6: 0.5}, 6: {8: 0.5}}))
    wrong = TableModel(table_with({5: {6: 0.5}, 6: {9: 0.5}}))
    for result in both_paths(right, p):
        assert result.correct and result.prediction == [6, 8]
    for result in both_paths(wrong, p):
        assert not result.correct and result.prediction == [6, 9]


def test_centered_score_rescales_chance_to_zero():
    assert centered_score(0.5, 25) == pytest.approx(1 / 3)
    assert centered_score(0.25, 25) == 0.0 and centered_score(1.0, 62) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# The real bundle


@pytest.fixture(scope="module")
def model(tok) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(tok.vocab_size).eval()


@pytest.fixture(scope="module")
def batched_run(tok, model):
    dump: list = []
    result = evaluate_core(model, tok, resolve_bundle(BUNDLE), max_per_task=40, dump=dump)
    return result, dump


@needs_bundle
def test_batched_and_one_record_paths_agree_on_every_record(tok, model, batched_run):
    result, batched = batched_run
    one: list = []
    reference = evaluate_core(model, tok, resolve_bundle(BUNDLE), max_per_task=40, batched=False, dump=one)
    assert len(result.per_task) == 18 and len(batched) == sum(r.evaluated for r in result.per_task.values())
    key = [(r["label"], r["index"], r["prediction"], r["correct"]) for r in batched]
    assert key == [(r["label"], r["index"], r["prediction"], r["correct"]) for r in one]
    for a, b in zip(batched, one, strict=True):
        if a["losses"] is not None:
            assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
    assert reference.to_dict() == result.to_dict()


@needs_bundle
def test_a_bundle_without_hellaswag_squad_coqa_is_partial_and_never_core(batched_run):
    result, _ = batched_run
    assert result.core is None and result.partial
    assert result.missing_labels == MISSING
    assert result.core_partial == pytest.approx(sum(r.centered for r in result.per_task.values()) / 18)
    table = result.table()
    assert "not CORE" in table and all(label in table for label in MISSING)
    assert json.loads(json.dumps(result.to_dict()))["missing_labels"] == MISSING


@needs_bundle
def test_max_per_task_below_the_shot_count_shrinks_the_shots_with_a_warning(tok, model):
    bundle = resolve_bundle(BUNDLE)
    with pytest.warns(UserWarning, match="using 2 shots"):
        result = evaluate_core(model, tok, bundle, max_per_task=3)
    assert all(r.evaluated == 3 for r in result.per_task.values())
    assert result.fewshot_shrunk == {t.label: 2 for t in bundle.tasks if t.num_fewshot > 2}
    with pytest.warns(UserWarning, match="using 0 shots"):
        evaluate_core(model, tok, bundle, max_per_task=1)
    with pytest.raises(ValueError, match="max_per_task=0"):
        evaluate_core(model, tok, bundle, max_per_task=0)


def _rank_main(rank: int, world: int, port: int, workdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tok = Tokenizer.load(Path(workdir) / "tok.json")
        model = TinyLM(tok.vocab_size)
        model.load_state_dict(torch.load(Path(workdir) / "model.pt"))
        dump: list = []
        result = evaluate_core(model.eval(), tok, resolve_bundle(BUNDLE), max_per_task=40, dump=dump)
        (Path(workdir) / f"rank{rank}.json").write_text(json.dumps({"result": result.to_dict(), "dump": dump}))
    finally:
        dist.destroy_process_group()


@needs_bundle
def test_two_gloo_ranks_give_the_same_result_as_one(tmp_path, tok, model, batched_run):
    tok.save(tmp_path / "tok.json")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2)
    result, dump = batched_run
    for rank in range(2):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["result"] == json.loads(json.dumps(result.to_dict()))
        assert [(r["label"], r["index"], r["correct"]) for r in out["dump"]] == [
            (r["label"], r["index"], r["correct"]) for r in dump
        ]

"""The CORE metric (DCLM's 22 in-context tasks), exactly as docs/spec/core.md specifies, batched and distributed.

    from evals.bundle import resolve_bundle
    from evals.core import evaluate_core
    result = evaluate_core(model, tokenizer, resolve_bundle(), max_per_task=-1, device="cuda")
    result.core            # None when the bundle lacks task files; then see result.core_partial
    print(result.table())

    python -m harness.evaluate RUN_DIR --bundle DIR [--max-per-task N]    # a run's exported model, as the referee does

``model`` is any callable mapping a (B, T) int64 tensor of token ids to (B, T, V) logits; it is called under
``torch.no_grad()``. The caller chooses the compute dtype (wrap the model in autocast for bf16).

Two paths give the same per-record answers: the one-record reference path (``batched=False``: one forward
per record, as upstream) and the default batched path, which renders and tokenizes many records at once,
sorts all their sequences by length and forwards them in batches of at most ``batch_tokens`` padded tokens.
Right padding (with BOS) cannot change a causal model's earlier positions, and every sequence is scored by
the same code, so only the model's own floating-point batch dependence could tell the paths apart.

Few-shot rule when a task has too few records (``max_per_task`` below the shot count + 1): record ``idx``
gets ``min(k, n - 1)`` examples, ``Random(1234 + idx).sample`` of the other ``n - 1`` indices of the kept
list; the shrink is warned about and recorded in ``CoreResult.fewshot_shrunk``.

Under torch.distributed, rank r evaluates records r::world of every task and correctness is all-reduced, so
the result does not depend on the number of ranks (docs/spec/core.md, Distributed evaluation).
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from evals.bundle import Bundle, TaskSpec
from harness.markdown import markdown_table

# Padded tokens per forward (the logits alone take batch_tokens * vocab * 4 bytes in fp32). On CPU smaller
# batches keep the logits in cache (measured: 4096 beats 16384 by ~1.5x on the tiny test model).
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 16384}
CHUNK_RECORDS = 512  # records rendered, tokenized and bucketed together (bounds host memory on big tasks)
SHUFFLE_SEED = 1337  # docs/spec/core.md, Shuffle
FEWSHOT_SEED = 1234  # docs/spec/core.md, Few-shot examples: Random(1234 + idx)


class CoreError(ValueError):
    """A record cannot be evaluated as the protocol requires; the message names the task and record."""


# ------------------------------------------------------------------------------------------------
# Results


@dataclass
class TaskResult:
    accuracy: float  # correct / evaluated
    centered: float  # (acc - rb/100) / (1 - rb/100)
    evaluated: int
    correct: int


@dataclass
class CoreResult:
    """Per-task results and the aggregate. ``core`` is None when the bundle lacks task files (partial)."""

    per_task: dict[str, TaskResult]
    core: float | None
    core_partial: float  # mean centered score over the tasks present
    missing_labels: list[str]
    bundle_digest: str
    max_per_task: int
    bundle_first_seen: list[str] = field(default_factory=list)  # files checked by first-seen digest only
    fewshot_shrunk: dict[str, int] = field(default_factory=dict)  # label -> shots used, where fewer than asked
    cropped: dict[str, int] = field(default_factory=dict)  # label -> records cropped to the model's longest row

    @property
    def partial(self) -> bool:
        return bool(self.missing_labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "core": self.core,
            "core_partial": self.core_partial,
            "partial": self.partial,
            "missing_labels": list(self.missing_labels),
            "max_per_task": self.max_per_task,
            "bundle_digest": self.bundle_digest,
            "bundle_first_seen": list(self.bundle_first_seen),
            "fewshot_shrunk": dict(self.fewshot_shrunk),
            "cropped": dict(self.cropped),
            "per_task": {label: vars(r).copy() for label, r in self.per_task.items()},
        }

    def table(self) -> str:
        """A markdown table, one row per task, then the aggregate (labelled partial when tasks are missing)."""
        rows = [[label, r.evaluated, f"{r.accuracy:.4f}", f"{r.centered:.4f}"] for label, r in self.per_task.items()]
        if self.core is not None:
            rows.append(["**CORE**", sum(r.evaluated for r in self.per_task.values()), "", f"**{self.core:.4f}**"])
        else:
            rows.append([f"**partial ({len(self.per_task)} tasks, not CORE)**", "", "", f"**{self.core_partial:.4f}**"])
        lines = [markdown_table(["task", "evaluated", "accuracy", "centered"], rows, align="lrrr")]
        if self.core is None:
            lines.append("")
            lines.append(f"Missing tasks: {', '.join(self.missing_labels)}")
        if self.max_per_task > 0:
            lines.append("")
            lines.append(f"At most {self.max_per_task} records per task (not the full protocol).")
        return "\n".join(lines)


def centered_score(accuracy: float, random_baseline: float) -> float:
    """docs/spec/core.md, Aggregation: rescale so that chance scores 0 and perfect scores 1."""
    return (accuracy - 0.01 * random_baseline) / (1.0 - 0.01 * random_baseline)


# ------------------------------------------------------------------------------------------------
# Records, few-shot sampling and prompts (docs/spec/core.md, Shuffle, Few-shot examples, Prompts)


@dataclass(frozen=True)
class Record:
    line: int  # 0-based line in the task's jsonl, for audits
    data: dict[str, Any]


def load_records(task: TaskSpec, max_per_task: int = -1) -> list[Record]:
    """All records of a task, shuffled with Random(1337); the first ``max_per_task`` when it is positive."""
    _check_max_per_task(max_per_task)
    try:
        with open(task.path, encoding="utf-8") as f:
            lines = [(line_no, line) for line_no, line in enumerate(f) if line.strip()]
    except UnicodeDecodeError:
        raise CoreError(f"line {_first_undecodable_line(task.path)} of {task.path} is not UTF-8 text") from None
    # The shuffle's permutation depends only on the list's length, so shuffling raw lines and parsing only
    # the kept ones gives the same records as parsing everything first.
    random.Random(SHUFFLE_SEED).shuffle(lines)
    if max_per_task > 0:
        lines = lines[:max_per_task]
    records = []
    for line_no, line in lines:
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CoreError(f"line {line_no + 1} of {task.path} is not JSON ({exc})") from None
        problem = record_problem(task.task_type, data)
        if problem:
            raise CoreError(f"line {line_no + 1} of {task.path} is not a {task.task_type} record: {problem}")
        records.append(Record(line_no, data))
    return records


def _first_undecodable_line(path: Path) -> int:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line_no + 1
    return 0  # unreachable for a file that failed to decode


# The fields each task type reads (docs/spec/core.md, Record formats); other fields (jeopardy's category) are ignored.
RECORD_FIELDS = {
    "multiple_choice": {"query": str, "choices": list, "gold": int},
    "schema": {"context_options": list, "continuation": str, "gold": int},
    "language_modeling": {"context": str, "continuation": str},
}


def record_problem(task_type: str, data: object) -> str | None:
    """What is wrong with one parsed jsonl record for ``task_type`` (naming the field), or None when it is usable."""
    fields = RECORD_FIELDS.get(task_type)
    if fields is None:
        return f"unknown task type {task_type!r}; expected one of {', '.join(RECORD_FIELDS)}"
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    for name, kind in fields.items():
        value = data.get(name)
        if type(value) is not kind:  # exact type: a bool is not a gold index
            return f"field {name!r} must be a {kind.__name__}, got {type(value).__name__} {_short(value)}"
    name = {"multiple_choice": "choices", "schema": "context_options"}.get(task_type)
    if name is not None:  # the options the gold index points into
        options = data[name]
        if not options or not all(isinstance(o, str) for o in options):
            return f"field {name!r} must be a non-empty list of strings, got {_short(options)}"
        if not 0 <= data["gold"] < len(options):
            return f"field 'gold' is {data['gold']}, outside the {len(options)} {name} (0-{len(options) - 1})"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_max_per_task(max_per_task: int) -> None:
    if max_per_task == 0 or max_per_task < -1:
        raise ValueError(f"max_per_task={max_per_task}: pass -1 for every record, or a positive cap")


def fewshot_indices(idx: int, n: int, k: int) -> list[int]:
    """``Random(1234 + idx).sample(every index of range(n) except idx, min(k, n - 1))``, in sample order.

    ``random.sample`` uses only the population's length and indexing, so sampling ``range(n - 1)`` and
    skipping over ``idx`` draws exactly what sampling the explicit list would, without building it (O(k),
    not O(n), per record).
    """
    k = min(k, n - 1)
    if k <= 0:
        return []
    return [j if j < idx else j + 1 for j in random.Random(FEWSHOT_SEED + idx).sample(range(n - 1), k)]


def render_prompts(task_type: str, item: dict, delimiter: str, shots: Sequence[dict]) -> list[str]:
    """The exact prompt strings of one record: one per option, or [without, with] for language modeling."""
    d = delimiter
    if task_type == "multiple_choice":
        block = "".join(f"{ex['query']}{d}{ex['choices'][ex['gold']]}\n\n" for ex in shots)
        return [f"{block}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        block = "".join(f"{ex['context_options'][ex['gold']]}{d}{ex['continuation']}\n\n" for ex in shots)
        return [f"{block}{option}{d}{item['continuation']}" for option in item["context_options"]]
    if task_type == "language_modeling":
        block = "".join(f"{ex['context'].strip()}{d}{ex['continuation']}\n\n" for ex in shots)
        stem = f"{block}{item['context'].strip()}{d}"
        # Strip the whole "without" prompt: a trailing space would merge into the continuation's first token.
        return [stem.strip(), f"{stem}{item['continuation']}"]
    raise CoreError(f"unknown task type {task_type!r}; expected multiple_choice, schema or language_modeling")


# ------------------------------------------------------------------------------------------------
# Tokens and answer spans (docs/spec/core.md, Answer spans)


@dataclass
class Prepared:
    """One record ready to score: the sequences to forward and each one's answer span [start, end)."""

    task: TaskSpec
    idx: int
    line: int
    gold: int | None
    tokens: list[list[int]]
    starts: list[int]
    ends: list[int]


def common_length(seqs: Sequence[Sequence[int]], from_end: bool = False) -> int:
    """Length of the longest common prefix (or suffix) of token sequences."""
    if from_end:
        seqs = [s[::-1] for s in seqs]
    first = seqs[0]
    # Binary search on the length, comparing whole slices (C speed): a common prefix of length m implies
    # common prefixes of every shorter length.
    lo, hi = 0, min(len(s) for s in seqs)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if all(s[:mid] == first[:mid] for s in seqs[1:]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def answer_spans(task_type: str, tokens: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]]:
    """The sequences to forward and their spans: common-prefix end (MC), common suffix (schema), or LM's tail."""
    if task_type == "multiple_choice":
        start = common_length(tokens)
        return tokens, [start] * len(tokens), [len(t) for t in tokens]
    if task_type == "schema":
        suffix = common_length(tokens, from_end=True)
        return tokens, [len(t) - suffix for t in tokens], [len(t) for t in tokens]
    without, with_ = tokens
    if not (len(without) < len(with_) and with_[: len(without)] == without):
        raise CoreError(
            "the tokens of the prompt without the continuation are not a strict prefix of the tokens with it"
        )
    return [with_], [len(without)], [len(with_)]


def prepare_records(
    task: TaskSpec,
    records: Sequence[Record],
    indices: Sequence[int],
    tokenizer,
    shrunk: dict[str, int] | None = None,
    max_len: int | None = None,
    cropped: dict[str, int] | None = None,
) -> list[Prepared]:
    """Render, tokenize (BOS first) and find the spans of the records at ``indices`` of ``records``.

    ``max_len``: the longest sequence the model accepts (None: any). A longer row keeps its last ``max_len``
    tokens and its span moves with them, as the reference does for a model with a hard context limit
    (docs/spec/core.md, Scoring); ``cropped`` counts the records cropped per task."""
    n, k = len(records), task.num_fewshot
    if k > n - 1 and shrunk is not None and task.label not in shrunk:
        shrunk[task.label] = max(n - 1, 0)
        warnings.warn(
            f"CORE task {task.label}: {n} records leave fewer than {k} others for few-shot examples; "
            f"using {max(n - 1, 0)} shots (raise max_per_task above {k} for the real protocol)",
            stacklevel=3,
        )
    prompts, counts = [], []
    for idx in indices:
        shots = [records[j].data for j in fewshot_indices(idx, n, k)]
        rendered = render_prompts(task.task_type, records[idx].data, task.delimiter, shots)
        prompts.extend(rendered)
        counts.append(len(rendered))
    # Many prompts: tiktoken's threaded batch encoder; a few (one record): plain calls, no thread-pool overhead.
    if len(prompts) >= 64:
        encoded = tokenizer.encode_batch(prompts, prepend_bos=True)
    else:
        encoded = [tokenizer.encode(prompt, prepend_bos=True) for prompt in prompts]
    out, at = [], 0
    for idx, count in zip(indices, counts, strict=True):
        record = records[idx]
        try:
            tokens, starts, ends = answer_spans(task.task_type, encoded[at : at + count])
        except CoreError as exc:
            raise CoreError(
                f"CORE task {task.label}, record {idx} (line {record.line + 1} of {task.path}): {exc}"
            ) from None
        at += count
        if max_len is not None and any(len(row) > max_len for row in tokens):
            tokens, starts, ends = crop_left(tokens, starts, ends, max_len, f"CORE task {task.label}, record {idx}")
            if cropped is not None:
                cropped[task.label] = cropped.get(task.label, 0) + 1
        out.append(Prepared(task, idx, record.line, record.data.get("gold"), tokens, starts, ends))
    return out


def crop_left(tokens: list[list[int]], starts: list[int], ends: list[int], max_len: int, what: str):
    """Keep each row's last ``max_len`` tokens, moving its span with them; the span must still fit whole."""
    rows, new_starts, new_ends = [], [], []
    for row, start, end in zip(tokens, starts, ends, strict=True):
        cut = max(0, len(row) - max_len)
        if start - cut < 1:
            raise CoreError(f"{what}: its answer span alone is longer than the {max_len} tokens the model accepts")
        rows.append(row[cut:])
        new_starts.append(start - cut)
        new_ends.append(end - cut)
    return rows, new_starts, new_ends


# ------------------------------------------------------------------------------------------------
# Forward and score (docs/spec/core.md, Scoring; Batching)


@dataclass
class RowScore:
    mean_loss: float  # mean cross entropy over the span's tokens (nan for an empty span, as upstream)
    all_match: bool  # greedy argmax equals every span token
    predicted: list[int]  # the greedy tokens over the span


@dataclass(frozen=True)
class Read:
    """Score the span [start, end) of ``targets``' sequence from row ``row`` of a forward batch.

    The row may be a longer sequence that begins with the same tokens: a causal model's logits at position
    i depend only on tokens 0..i, so any row agreeing up to end-2 gives the same logits at start-1 .. end-2.
    """

    row: int
    start: int
    end: int
    targets: tuple[int, ...]  # the sequence's tokens start .. end-1


def score_rows(model: Callable, rows: Sequence[Sequence[int]], reads: Sequence[Read], pad_id: int, device):
    """Forward ``rows`` right-padded with ``pad_id`` in one batch; return a RowScore per read.

    Position i predicts token i + 1, so a span's tokens are predicted at positions start-1 .. end-2.
    Only those positions' logits are gathered, in float32, so the loss never touches the padding.
    """
    width = max(len(r) for r in rows)
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        inputs[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    row_idx = torch.tensor([r.row for r in reads for _ in range(r.start, r.end)], dtype=torch.long)
    pos_idx = torch.tensor([i for r in reads for i in range(r.start - 1, r.end - 1)], dtype=torch.long)
    targets = torch.tensor([t for r in reads for t in r.targets], dtype=torch.long)
    with torch.no_grad():
        logits = model(inputs.to(device))
        if logits.dim() != 3 or logits.shape[:2] != inputs.shape:
            raise CoreError(
                f"the model returned shape {tuple(logits.shape)} for input {tuple(inputs.shape)}; "
                "CORE needs (B, T, vocab) logits from model(ids)"
            )
        picked = logits[row_idx.to(device), pos_idx.to(device)].float()
        losses = F.cross_entropy(picked, targets.to(device), reduction="none").cpu()
        predicted = picked.argmax(dim=-1).cpu()
    scores, at = [], 0
    for r in reads:
        n = r.end - r.start
        span_pred = predicted[at : at + n]
        match = bool((span_pred == targets[at : at + n]).all())
        scores.append(RowScore(losses[at : at + n].mean().item(), match, span_pred.tolist()))
        at += n
    return scores


@dataclass
class RecordResult:
    label: str
    index: int  # position after the shuffle
    line: int  # line in the jsonl
    prediction: int | list[int]  # chosen option, or the greedy continuation tokens (language modeling)
    correct: bool
    losses: list[float] | None = None  # mean span loss per option (multiple choice and schema)


def decide(p: Prepared, scores: Sequence[RowScore]) -> RecordResult:
    """Lowest mean loss wins (first of ties) for MC and schema; exact greedy match for language modeling."""
    if p.task.task_type == "language_modeling":
        (row,) = scores
        return RecordResult(p.task.label, p.idx, p.line, row.predicted, row.all_match)
    losses = [s.mean_loss for s in scores]
    pred = losses.index(min(losses))
    return RecordResult(p.task.label, p.idx, p.line, pred, pred == p.gold, losses)


def _reads(p: Prepared, rows: Sequence[int]) -> list[Read]:
    return [Read(row, s, e, tuple(t[s:e])) for row, t, s, e in zip(rows, p.tokens, p.starts, p.ends, strict=True)]


def evaluate_record(model: Callable, tokenizer, p: Prepared, device) -> RecordResult:
    """The one-record reference path: one forward holding this record's full sequences, as upstream does."""
    reads = _reads(p, range(len(p.tokens)))
    return decide(p, score_rows(model, p.tokens, reads, tokenizer.bos_token_id, device))


def shared_rows(p: Prepared) -> tuple[list[list[int]], list[int]]:
    """The fewest input rows that give every option's span logits, and which row serves each option.

    An option needs its tokens up to end-2 as input (the last token is only a target). When that input is
    a prefix of another option's, the longer row serves both: for single-token answers after a common
    prefix (" A"/" B", " yes"/" no") all options share one row.
    """
    needs = [t[: e - 1] for t, e in zip(p.tokens, p.ends, strict=True)]
    rows: list[list[int]] = []
    host = [0] * len(needs)
    for o in sorted(range(len(needs)), key=lambda o: -len(needs[o])):
        need = needs[o]
        for r, row in enumerate(rows):
            if row[: len(need)] == need:
                host[o] = r
                break
        else:
            host[o] = len(rows)
            rows.append(need)
    return rows, host


def evaluate_batched(model: Callable, tokenizer, prepared: Sequence[Prepared], device, batch_tokens: int):
    """Score many records: shared rows sorted by length (longest first), batched under a padded-token budget."""
    rows: list[tuple[list[int], list[tuple[int, Read]]]] = []  # (input tokens, [(record, read), ...])
    for r, p in enumerate(prepared):
        inputs, host = shared_rows(p)
        first = len(rows)
        rows.extend((tokens, []) for tokens in inputs)
        for o, read in enumerate(_reads(p, host)):
            rows[first + read.row][1].append((r, o))
    rows.sort(key=lambda row: -len(row[0]))
    scores: list[list[RowScore | None]] = [[None] * len(p.tokens) for p in prepared]
    at = 0
    while at < len(rows):
        size = max(1, batch_tokens // len(rows[at][0]))  # rows[at] is the longest of this batch
        batch = rows[at : at + size]
        at += len(batch)
        reads, owners = [], []
        for b, (_, users) in enumerate(batch):
            for r, o in users:
                p = prepared[r]
                s, e = p.starts[o], p.ends[o]
                reads.append(Read(b, s, e, tuple(p.tokens[o][s:e])))
                owners.append((r, o))
        batch_scores = score_rows(model, [x for x, _ in batch], reads, tokenizer.bos_token_id, device)
        for (r, o), score in zip(owners, batch_scores, strict=True):
            scores[r][o] = score
    return [decide(p, s) for p, s in zip(prepared, scores, strict=True)]


# ------------------------------------------------------------------------------------------------
# The whole eval


def evaluate_core(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokenizer,
    bundle: Bundle,
    max_per_task: int = -1,
    device: str | torch.device = "cpu",
    batch_tokens: int | None = None,
    progress: bool = False,
    batched: bool = True,
    dump: list | None = None,
    max_len: int | None = None,
    log=None,
) -> CoreResult:
    """Evaluate CORE on every task of ``bundle`` present on disk.

    ``max_per_task``: -1 for every record (the protocol), or a positive cap on records per task after the
    shuffle. ``batch_tokens``: padded tokens per forward in the batched path (default by device type,
    ``DEFAULT_BATCH_TOKENS``). ``batched=False`` runs the
    one-record reference path. ``dump``: a list that receives one dict per record (label, index, line,
    prediction, correct, and losses for MC/schema), gathered from all ranks, in task then index order.
    ``max_len``: the longest row the model accepts; longer rows are cropped from the left (``prepare_records``).
    ``log``: called with one line per task as it completes (a progress line where no bar is shown).
    Uses torch.distributed when it is initialised; every rank must call this and gets the same result.
    """
    _check_max_per_task(max_per_task)
    if batch_tokens is None:
        batch_tokens = DEFAULT_BATCH_TOKENS.get(torch.device(device).type, DEFAULT_BATCH_TOKENS["cuda"])
    if batch_tokens <= 0:
        raise ValueError(f"batch_tokens={batch_tokens}: pass a positive number of padded tokens per forward")
    if not bundle.tasks:
        raise ValueError(f"the bundle at {bundle.root} has no task files; missing: {', '.join(bundle.missing_labels)}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    tasks = [(task, load_records(task, max_per_task)) for task in bundle.tasks]
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(range(rank, len(records), world)) for _, records in tasks), unit="rec", desc="CORE")

    per_task: dict[str, TaskResult] = {}
    shrunk: dict[str, int] = {}
    cropped: dict[str, int] = {}
    my_results: list[RecordResult] = []
    for task, records in tasks:
        if bar is not None:
            bar.set_postfix_str(task.label)
        correct = torch.zeros(len(records), dtype=torch.float64, device=device)
        mine = list(range(rank, len(records), world))
        chunk = CHUNK_RECORDS if batched else 1
        for at in range(0, len(mine), chunk):
            prepared = prepare_records(task, records, mine[at : at + chunk], tokenizer, shrunk, max_len, cropped)
            if batched:
                results = evaluate_batched(model, tokenizer, prepared, device, batch_tokens)
            else:
                results = [evaluate_record(model, tokenizer, p, device) for p in prepared]
            for result in results:
                correct[result.index] = float(result.correct)
            if dump is not None:
                my_results.extend(results)
            if bar is not None:
                bar.update(len(prepared))
        if distributed:
            dist.all_reduce(correct, op=dist.ReduceOp.SUM)
        n_correct = int(round(correct.sum().item()))
        accuracy = n_correct / len(records)
        per_task[task.label] = TaskResult(
            accuracy, centered_score(accuracy, task.random_baseline), len(records), n_correct
        )
        if log is not None and rank == 0:
            done = len(per_task)
            log(f"CORE {done:>2}/{len(tasks)} {task.label:<34} accuracy {accuracy:.3f} ({len(records)} records)")
    if bar is not None:
        bar.close()

    if dump is not None:
        rows = [vars(r).copy() for r in my_results]
        if distributed:
            gathered: list[list[dict]] = [[] for _ in range(world)]
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        order = {task.label: i for i, task in enumerate(bundle.tasks)}
        dump.extend(sorted(rows, key=lambda row: (order[row["label"]], row["index"])))

    core_partial = sum(r.centered for r in per_task.values()) / len(per_task)
    return CoreResult(
        per_task=per_task,
        core=None if bundle.missing_labels else core_partial,
        core_partial=core_partial,
        missing_labels=list(bundle.missing_labels),
        bundle_digest=bundle.digest,
        max_per_task=max_per_task,
        bundle_first_seen=list(bundle.first_seen),
        fewshot_shrunk=shrunk,
        cropped=cropped,
    )

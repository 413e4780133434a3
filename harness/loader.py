"""Token streams for training and validation: BOS-aligned best-fit packing of tokenized parquet documents.

    loader = TrainLoader(ds.train_files, tok, batch_size=16, seq_len=2048, rank=r, world_size=w, device="cuda:3")
    inputs, targets = next(loader)                  # (B, T) int64 on the device; targets are inputs shifted by one
    state = loader.state_dict()                     # later: loader.load_state_dict(state) resumes exactly
    loader.stream_digest                            # proof of every token handed out so far
    rows = validation_rows(ds.val_file, tok, num_tokens=20 * 524_288, seq_len=2048)   # (N, T+1), same on all ranks

Packing follows the reference (docs/spec/reference-recipe.md, Packing): every document is tokenized with BOS in front
and kept in a buffer of ``buffer_docs`` documents, refilled 128 at a time; each row of T+1 tokens is filled by taking
the largest buffered document that fits (the earliest buffered among equals) and, when none fits, the shortest one
cropped to the room left (its remainder is dropped, never reused). Every row starts with BOS and there is no padding.

Distribution: rank r of W reads row groups r, r+W, r+2W, ... of every file, in file order. The ``seed`` picks the
order: seed 0 reads files and row groups in catalog order every epoch (the reference's order); any other seed
shuffles the file order and each file's row-group order, afresh every epoch, from (seed, epoch) alone, so every rank
agrees and ranks still read disjoint row groups. The loader never runs dry: after the last row group it starts the
next epoch, and the state says which epoch it is in.

Tokenization runs on ``threads`` background threads (tiktoken releases the GIL), one row group per task, results
consumed in order, so the stream is the same whatever the thread count or timing. On CUDA the rows are packed into
pinned host memory and copied without blocking, on the loader's own device (``cuda:N``).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import random
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

STATE_VERSION = 1
THREADS = min(4, os.cpu_count() or 1)  # tokenizer threads per rank: the reference's 4, fewer on small machines
REFILL_DOCS = 128  # documents added to the buffer at a time, as the reference's tokenizer batches
TEXT_COLUMN = "text"

# ------------------------------------------------------------------------------------------------
# Tokenizing a row group


class ShardReadError(OSError):
    """A shard that was verified at the start of the run can no longer be read."""


def parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ShardReadError(
            f"shard {path} cannot be read: {exc}. It was verified when the run started, so it changed during the "
            f"run; check it with `python -m harness.data verify` and download it again"
        ) from exc


def read_row_group(path: Path, row_group: int) -> list[str]:
    try:
        table = parquet_file(path).read_row_group(row_group, columns=[TEXT_COLUMN], use_threads=False)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ShardReadError):
            raise
        raise ShardReadError(f"shard {path}, row group {row_group}, cannot be read: {exc}") from exc
    return table.column(0).to_pylist()


def encode_documents(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize documents, each with BOS in front, as one flat uint32 array plus document start offsets.

    Returns (tokens, bounds): document i is ``tokens[bounds[i]:bounds[i+1]]``. The documents are joined with the
    BOS text and encoded in one call with only BOS allowed as special: tiktoken encodes the text between special
    tokens independently, so this equals encoding each document alone, without a Python list per document.
    """
    encoding, bos = tokenizer.encoding, tokenizer.bos_token_id
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(1, np.int64)
    bos_text = encoding.decode_single_token_bytes(bos).decode("utf-8")
    tokens = encoding.encode_to_numpy(
        bos_text + bos_text.join(texts), allowed_special={bos_text}, disallowed_special=()
    )
    starts = np.flatnonzero(tokens == bos)
    if len(starts) != len(texts):
        # Some document contains the BOS text itself, which must stay ordinary text: encode one at a time.
        pieces = []
        for text in texts:
            pieces.append(np.array([bos], np.uint32))
            pieces.append(encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=()))
        tokens = np.concatenate(pieces).astype(np.uint32, copy=False)
        lengths = np.array([len(p) for p in pieces[1::2]], np.int64) + 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return tokens, np.append(starts, len(tokens)).astype(np.int64)


class _Prefetcher:
    """Runs ``load(position)`` for positions in order on a thread pool, ``depth`` ahead; yields results in order."""

    def __init__(self, pool: ThreadPoolExecutor, load: Callable, positions: Iterator[int], depth: int):
        self.pool, self.load, self.positions, self.depth = pool, load, positions, depth
        self.pending: deque[tuple[int, Future]] = deque()
        self._top_up()

    def _top_up(self) -> None:
        while len(self.pending) < self.depth:
            position = next(self.positions, None)
            if position is None:
                return
            self.pending.append((position, self.pool.submit(self.load, position)))

    def next(self):
        """(position, result) of the next position, or None when the positions are exhausted."""
        if not self.pending:
            return None
        position, future = self.pending.popleft()
        self._top_up()
        return position, future.result()

    def cancel(self) -> None:
        for _, future in self.pending:
            future.cancel()
        self.pending.clear()


# ------------------------------------------------------------------------------------------------
# Best-fit packing


class _Exhausted(Exception):
    """A finite document source ran dry before the row was full."""


class Packer:
    """The document buffer and best-fit row filling, fed from a source of tokenized row groups ("units").

    ``next_unit()`` returns (position, tokens, bounds) or None when the source is finite and done. Documents are
    identified by (unit position, index in unit), which is all a saved state needs to rebuild the buffer.
    """

    def __init__(self, next_unit: Callable, buffer_docs: int):
        self.next_unit = next_unit
        self.buffer_docs = buffer_docs
        self.lengths: list[int] = []  # distinct buffered lengths, sorted
        self.by_length: dict[int, deque] = {}  # length -> deque of (seq, tokens, start, position, index), FIFO
        self.count = 0
        self.seq = 0
        self.unit = None  # (position, tokens, bounds) being added to the buffer
        self.cursor = 0  # next document of self.unit to add
        self.cropped = 0  # tokens dropped by cropping

    def add(self, tokens: np.ndarray, start: int, length: int, position: int, index: int) -> None:
        queue = self.by_length.get(length)
        if queue is None:
            queue = self.by_length[length] = deque()
            bisect.insort(self.lengths, length)
        queue.append((self.seq, tokens, start, position, index))
        self.seq += 1
        self.count += 1

    def refill(self) -> None:
        while self.count < self.buffer_docs:
            if self.unit is None or self.cursor >= len(self.unit[2]) - 1:
                self.unit, self.cursor = self.next_unit(), 0
                if self.unit is None:
                    return
            position, tokens, bounds = self.unit
            stop = min(self.cursor + REFILL_DOCS, len(bounds) - 1)
            for i in range(self.cursor, stop):
                self.add(tokens, int(bounds[i]), int(bounds[i + 1] - bounds[i]), position, i)
            self.cursor = stop

    def fill_row(self, row: np.ndarray) -> None:
        """Fill ``row`` completely: largest fitting document first, else crop the shortest."""
        capacity, pos = len(row), 0
        lengths, by_length = self.lengths, self.by_length
        while pos < capacity:
            if self.count < self.buffer_docs:
                self.refill()
                if not self.count:
                    raise _Exhausted
            room = capacity - pos
            i = bisect.bisect_right(lengths, room) - 1
            if i < 0:
                i = 0  # nothing fits: crop the shortest
            length = lengths[i]
            queue = by_length[length]
            _, tokens, start, _, _ = queue.popleft()
            if not queue:
                del by_length[length]
                del lengths[i]
            self.count -= 1
            n = min(length, room)
            row[pos : pos + n] = tokens[start : start + n]
            self.cropped += length - n
            pos += n

    def buffered(self) -> list[list[int]]:
        """[position, index] of every buffered document, in the order they were buffered."""
        entries = sorted(entry for queue in self.by_length.values() for entry in queue)
        return [[position, index] for _, _, _, position, index in entries]


def pack_rows(units: Iterator[tuple[np.ndarray, np.ndarray]], seq_len: int, buffer_docs: int = 1000) -> Iterator:
    """Rows of ``seq_len + 1`` tokens (int32) best-fit packed from a finite source of (tokens, bounds) units."""
    numbered = ((position, tokens, bounds) for position, (tokens, bounds) in enumerate(units))
    packer = Packer(lambda: next(numbered, None), buffer_docs)
    while True:
        row = np.empty(seq_len + 1, np.int32)
        try:
            packer.fill_row(row)
        except _Exhausted:
            return
        yield row


# ------------------------------------------------------------------------------------------------
# Proof of data


class StreamDigest:
    """A running sha256 of token rows: d_0 = sha256(b""), d_k = sha256(d_{k-1} || rows_k as little-endian int32).

    Equal digests after the same number of batches mean identical token streams; the state is the hex string.
    """

    def __init__(self, hexdigest: str | None = None):
        self.value = bytes.fromhex(hexdigest) if hexdigest else hashlib.sha256(b"").digest()

    def update(self, rows: np.ndarray | torch.Tensor) -> None:
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        data = np.ascontiguousarray(rows, dtype="<i4")
        self.value = hashlib.sha256(self.value + data.tobytes()).digest()

    def hexdigest(self) -> str:
        return self.value.hex()


# ------------------------------------------------------------------------------------------------
# The training loader


class TrainLoader:
    """An endless, resumable iterator of (inputs, targets) int64 tensors of shape (batch_size, seq_len) on ``device``.

    See the module docstring for the packing, the distribution over ranks and what the seed changes.
    """

    def __init__(
        self,
        files: list[Path],
        tokenizer,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
        seed: int = 0,
        buffer_docs: int = 1000,
        threads: int = THREADS,
    ):
        if not files:
            raise ValueError("TrainLoader needs at least one training file")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        if batch_size < 1 or seq_len < 1 or buffer_docs < 1 or threads < 1:
            raise ValueError(
                f"batch_size, seq_len, buffer_docs and threads must be >= 1, got "
                f"{batch_size}, {seq_len}, {buffer_docs}, {threads}"
            )
        self.files = [Path(f) for f in files]
        self.tokenizer = tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.buffer_docs, self.threads = buffer_docs, threads
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.row_groups = [parquet_file(f).num_row_groups for f in self.files]
        self.units_per_epoch = sum(len(range(rank, n, world_size)) for n in self.row_groups)
        if self.units_per_epoch == 0:
            raise ValueError(
                f"rank {rank} of {world_size} gets no row groups: the {len(self.files)} files hold "
                f"{sum(self.row_groups)} row groups in all; use more shards or fewer ranks"
            )
        self._config = {
            "files": [f.name for f in self.files],
            "rank": rank,
            "world_size": world_size,
            "seed": seed,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "buffer_docs": buffer_docs,
            "tokenizer": tokenizer.digest,
        }
        # Worker threads ask for plans too; lru_cache is thread-safe, and two epochs are live at a boundary.
        self._plan = functools.lru_cache(maxsize=4)(self._make_plan)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="speedrun-tokenize")
        self._prefetcher: _Prefetcher | None = None
        self._host_rows = self._allocate_host_rows()
        self._turn = 0
        self._restart(unit=0, doc=0, buffered=[])
        self.batches = 0
        self.tokens_seen = 0
        self._digest = StreamDigest()

    # -- which row groups this rank reads -----------------------------------------------------------

    def epoch_plan(self, epoch: int) -> list[tuple[Path, int]]:
        """The (file, row group) units this rank reads in ``epoch``, in order."""
        return [(self.files[f], rg) for f, rg in self._plan(epoch)]

    def _make_plan(self, epoch: int) -> list[tuple[int, int]]:
        files = list(range(len(self.files)))
        # A str seed is hashed with sha512 by random.Random: the same order on every machine and Python version.
        rng = random.Random(f"speedrun-loader:{self.seed}:{epoch}") if self.seed else None
        if rng:
            rng.shuffle(files)
        plan = []
        for f in files:
            groups = list(range(self.row_groups[f]))
            if rng:
                rng.shuffle(groups)
            plan.extend((f, rg) for rg in groups[self.rank :: self.world_size])
        return plan

    def _load(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, k = divmod(position, self.units_per_epoch)
        f, rg = self._plan(epoch)[k]
        return encode_documents(self.tokenizer, read_row_group(self.files[f], rg))

    # -- the stream ---------------------------------------------------------------------------------

    def _restart(self, unit: int, doc: int, buffered: list[list[int]]) -> None:
        """Rebuild the packer at a saved position: refill cursor (unit, doc) and the buffered documents."""
        if self._prefetcher is not None:
            self._prefetcher.cancel()
        loaded = {p: self._load(p) for p in sorted({p for p, _ in buffered} - {unit})}
        positions = iter(range(unit, 2**62))
        self._prefetcher = _Prefetcher(self._pool, self._load, positions, depth=2 * self.threads)

        def next_unit():
            position, (tokens, bounds) = self._prefetcher.next()
            return position, tokens, bounds

        self._packer = Packer(next_unit, self.buffer_docs)
        current = next_unit() if (doc or any(p == unit for p, _ in buffered)) else None
        if current is not None:
            loaded[unit] = current[1:]
        for position, index in buffered:
            tokens, bounds = loaded[position]
            start, stop = int(bounds[index]), int(bounds[index + 1])
            self._packer.add(tokens, start, stop - start, position, index)
        if current is not None:
            self._packer.unit, self._packer.cursor = current, doc

    def _allocate_host_rows(self) -> list[torch.Tensor]:
        shape = (self.batch_size, self.seq_len + 1)
        if self.device.type != "cuda":
            return [torch.empty(shape, dtype=torch.int32)]
        with torch.cuda.device(self.device):
            # Two pinned buffers in turn, each guarded by the event of its last copy, so a buffer is never
            # overwritten while an asynchronous copy may still be reading it.
            self._events = [torch.cuda.Event(), torch.cuda.Event()]
            return [torch.empty(shape, dtype=torch.int32, pin_memory=True) for _ in range(2)]

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        host = self._host_rows[self._turn]
        if self.device.type == "cuda":
            self._events[self._turn].synchronize()
        rows = host.numpy()
        for row in rows:
            self._packer.fill_row(row)
        self._digest.update(rows)
        self.batches += 1
        self.tokens_seen += self.batch_size * self.seq_len
        if self.device.type != "cuda":
            out = torch.empty((2, self.batch_size, self.seq_len), dtype=torch.int64)
            out[0].copy_(host[:, :-1])
            out[1].copy_(host[:, 1:])
            return out[0], out[1]
        with torch.cuda.device(self.device):
            gpu = host.to(self.device, non_blocking=True)
            self._events[self._turn].record()
            self._turn = (self._turn + 1) % len(self._host_rows)
            gpu = gpu.long()
            return gpu[:, :-1].contiguous(), gpu[:, 1:].contiguous()

    # -- facts and state ----------------------------------------------------------------------------

    @property
    def stream_digest(self) -> str:
        """Running sha256 of the rows handed out so far (see StreamDigest)."""
        return self._digest.hexdigest()

    @property
    def epoch(self) -> int:
        """The epoch of the row group the buffer is being refilled from (0 until the files are first exhausted)."""
        unit = self._packer.unit
        return (unit[0] if unit is not None else 0) // self.units_per_epoch

    @property
    def cropped_tokens(self) -> int:
        """Tokens dropped by cropping since the start (the reference loses about 35% at T=2048 on web text)."""
        return self._packer.cropped

    def state_dict(self) -> dict:
        unit = self._packer.unit
        return {
            "version": STATE_VERSION,
            "config": dict(self._config),
            "unit": unit[0] if unit is not None else 0,
            "doc": self._packer.cursor if unit is not None else 0,
            "epoch": self.epoch,
            "buffer": self._packer.buffered(),
            "batches": self.batches,
            "tokens_seen": self.tokens_seen,
            "cropped_tokens": self._packer.cropped,
            "stream_digest": self.stream_digest,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly where ``state`` was taken: the next batches equal those the saved loader would give."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not {STATE_VERSION}; start afresh")
        for key, value in self._config.items():
            if state["config"].get(key) != value:
                raise ValueError(
                    f"loader state was saved with {key}={state['config'].get(key)!r} but this loader has "
                    f"{key}={value!r}; resume with the same files, ranks, seed, batch shape and tokenizer"
                )
        self._restart(state["unit"], state["doc"], state["buffer"])
        self._packer.cropped = state["cropped_tokens"]
        self.batches, self.tokens_seen = state["batches"], state["tokens_seen"]
        self._digest = StreamDigest(state["stream_digest"])

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# Validation


def validation_rows(
    val_file: Path,
    tokenizer,
    num_tokens: int,
    seq_len: int,
    buffer_docs: int = 1000,
    threads: int = THREADS,
    exact: bool = True,
) -> torch.Tensor:
    """The fixed validation set: N = num_tokens // seq_len rows of seq_len+1 tokens, int64 on CPU.

    ``exact=False`` returns the rows the shard holds when it holds fewer than N (instead of raising).

    Best-fit packed from the validation shard in file order, exactly like training rows. It depends on nothing
    but its arguments (not world size, not batch size), so every configuration evaluates the same tokens: give
    rank r the rows r::world_size (evals.bpb does).
    """
    num_rows = num_tokens // seq_len
    if num_rows < 1:
        raise ValueError(f"num_tokens={num_tokens} is less than one row of seq_len={seq_len}")
    val_file = Path(val_file)
    num_groups = parquet_file(val_file).num_row_groups
    out = torch.empty((num_rows, seq_len + 1), dtype=torch.int64)
    with ThreadPoolExecutor(threads, thread_name_prefix="speedrun-val") as pool:
        prefetcher = _Prefetcher(
            pool,
            lambda rg: encode_documents(tokenizer, read_row_group(val_file, rg)),
            iter(range(num_groups)),
            depth=2 * threads,
        )

        def units():
            while (item := prefetcher.next()) is not None:
                yield item[1]

        made = 0
        for made, row in enumerate(pack_rows(units(), seq_len, buffer_docs), start=1):
            out[made - 1] = torch.from_numpy(row)
            if made == num_rows:
                break
        prefetcher.cancel()
    if made < num_rows and not exact:
        return out[:made]
    if made < num_rows:
        raise ValueError(
            f"{val_file.name} holds only {made} validation rows of {seq_len + 1} tokens, fewer than the "
            f"{num_rows} asked for; ask for at most num_tokens={made * seq_len}"
        )
    return out

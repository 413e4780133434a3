"""The pinned BPE tokenizer: trained with rustbpe, used through tiktoken, identified by a content digest.

    tok = train_tokenizer(texts, vocab_size=4096)     # rustbpe learns the merges
    ids = tok.encode("Hello", prepend_bos=True)      # tiktoken encodes
    tok.save(path); Tokenizer.load(path)             # a small JSON file; tok.digest identifies it

The vocabulary is 256 byte tokens, then the learned merges, then the special tokens at the end (the
first special token is ``<|bos|>``), as in the reference (docs/spec/reference-recipe.md, Tokenizer).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version
from pathlib import Path

import tiktoken
import torch

from harness.fileio import atomic_write_json, atomic_write_text, cache_dir, file_lock

# GPT-4's split pattern with numbers split into groups of at most two digits (docs/spec/reference-recipe.md, Tokenizer).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Nine special tokens, the first being BOS; the others are the reference's chat tokens, kept so that
# vocabulary ids match the reference layout.
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]
FORMAT_VERSION = 1


class Tokenizer:
    """A tiktoken encoding plus the facts the harness needs: BOS id, per-token byte lengths, digest."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN, name: str = "speedrun"):
        self.mergeable_ranks = mergeable_ranks
        self.pattern = pattern
        n = len(mergeable_ranks)
        special = {token: n + i for i, token in enumerate(SPECIAL_TOKENS)}
        self.encoding = tiktoken.Encoding(
            name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=special
        )
        self.bos_token_id = special["<|bos|>"]
        self.vocab_size = n + len(SPECIAL_TOKENS)

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        """Encode ordinary text (special-token strings in it are treated as plain text)."""
        ids = self.encoding.encode_ordinary(text)
        return [self.bos_token_id, *ids] if prepend_bos else ids

    def encode_batch(self, texts: list[str], prepend_bos: bool = False, num_threads: int = 8) -> list[list[int]]:
        batch = self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)
        if prepend_bos:
            for ids in batch:
                ids.insert(0, self.bos_token_id)
        return batch

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def token_bytes(self) -> torch.Tensor:
        """UTF-8 byte length of every token id (int64, length vocab_size); special tokens count 0 bytes."""
        lengths = torch.zeros(self.vocab_size, dtype=torch.int64)
        for token, rank in self.mergeable_ranks.items():
            lengths[rank] = len(token)
        return lengths

    # -- identity and storage ----------------------------------------------------------------------

    def to_json(self) -> dict:
        ranks = sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        return {
            "format_version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": SPECIAL_TOKENS,
            "ranks": [base64.b64encode(token).decode("ascii") for token, _ in ranks],
        }

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal digests mean identical tokenization."""
        payload = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(payload).hexdigest()

    def save(self, path: str | Path) -> None:

        atomic_write_text(path, json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a file written by ``save``; raises ValueError naming the file and what is wrong with it."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            if data.get("format_version") != FORMAT_VERSION or data.get("special_tokens") != SPECIAL_TOKENS:
                raise ValueError("unknown format version or special tokens")
            if not isinstance(data.get("pattern"), str) or not isinstance(data.get("ranks"), list):
                raise ValueError("'pattern' must be a string and 'ranks' a list of base64 tokens")
            ranks = {base64.b64decode(token, validate=True): rank for rank, token in enumerate(data["ranks"])}
            if len(ranks) != len(data["ranks"]):
                raise ValueError("'ranks' lists a token twice")
            if any(bytes([b]) not in ranks for b in range(256)):
                raise ValueError("'ranks' lacks some of the 256 single-byte tokens every text needs")
            return cls(ranks, pattern=data["pattern"])
        except (OSError, ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError,
            # binascii.Error (bad base64) and tiktoken's bad-pattern error are ValueErrors
            raise ValueError(f"tokenizer file {path} is unreadable ({exc}); delete it to retrain") from None


def train_tokenizer(texts: Iterator[str] | Iterable[str], vocab_size: int) -> Tokenizer:
    """Learn BPE merges with rustbpe so that the vocabulary, special tokens included, has ``vocab_size`` ids.

    Deterministic: the same texts in the same order give the same merges.
    """
    import rustbpe  # imported when training: loading a tokenizer (every run, every eval) does not need it

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: need at least {256 + len(SPECIAL_TOKENS) + 1}")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    return Tokenizer(ranks, pattern=trainer.get_pattern())


def train_tokenizer_cached(
    texts: Callable[[], Iterable[str]], vocab_size: int, key: dict, cache: str | Path | None = None
) -> Tokenizer:
    """``train_tokenizer(texts(), vocab_size)``, cached on disk: the second call with the same key loads the file.

    ``key`` names what the texts are (for example the dataset digest and how much of it is read); the cache file
    ``<cache>/tokenizers/<sha256 of key, vocab size, split pattern, special tokens, rustbpe version>.json`` sits
    beside a ``.meta.json`` with the readable key. ``texts`` is only called on a miss. Processes that call this
    at once (one per rank) serialise on a file lock, so only the first one trains.
    """
    full_key = {
        **key,
        "vocab_size": vocab_size,
        "pattern": SPLIT_PATTERN,
        "special_tokens": SPECIAL_TOKENS,
        "format_version": FORMAT_VERSION,
        "trainer": f"rustbpe {version('rustbpe')}",
    }
    name = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache if cache is not None else cache_dir() / "tokenizers") / f"{name}.json"
    with file_lock(path):
        if path.exists():
            try:
                return Tokenizer.load(path)
            except ValueError:
                pass  # unreadable (for example a different format version): train it again below
        tokenizer = train_tokenizer(texts(), vocab_size)
        tokenizer.save(path)
        atomic_write_json(path.with_suffix(".meta.json"), {**full_key, "digest": tokenizer.digest})
        return tokenizer

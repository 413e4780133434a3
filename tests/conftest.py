"""Shared fixtures: where the shared eval bundle is, and one harness cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BUNDLE = REPO.parent / "shared" / "eval_bundle"


@pytest.fixture(scope="session")
def eval_bundle_dir() -> Path:
    path = Path(os.environ.get("SPEEDRUN_EVAL_BUNDLE", SHARED_BUNDLE))
    if not (path / "core.yaml").is_file():
        pytest.skip(f"no CORE eval bundle at {path}; set SPEEDRUN_EVAL_BUNDLE to a bundle folder")
    return path


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One SPEEDRUN_CACHE for the session's harness runs, so the smoke corpus and tokenizer build once."""
    return tmp_path_factory.mktemp("speedrun-cache")


@pytest.fixture(scope="session")
def harness_env(session_cache, eval_bundle_dir) -> dict[str, str]:
    """Environment for harness subprocesses: the session cache, the bundle, and no wandb traffic."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_")}
    return {
        **inherited,
        "SPEEDRUN_CACHE": str(session_cache),
        "SPEEDRUN_EVAL_BUNDLE": str(eval_bundle_dir),
        "WANDB_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
    }

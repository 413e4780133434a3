"""Shared fixtures: where the shared eval bundle is, one harness cache per test session, a headless Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers_browser import CHROMIUM, CHROMIUM_ARGS
from helpers_evals import BUNDLE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def eval_bundle_dir(tmp_path_factory) -> Path:
    """A private copy of the bundle (13 MB): the referee notices any process opening a run's bundle files while
    its worker lives, so runs must not share the files with other test sessions on the machine."""
    if not (BUNDLE / "core.yaml").is_file():
        pytest.skip(f"no CORE eval bundle at {BUNDLE}; set SPEEDRUN_EVAL_BUNDLE to a bundle folder")
    copy = tmp_path_factory.mktemp("bundle") / "eval_bundle"
    shutil.copytree(BUNDLE, copy)
    return copy


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


@pytest.fixture
def one_thread():
    """Tiny models run no faster on two threads, and on a shared 2-core machine OpenMP's two threads can be
    hundreds of times slower than one (measured: a 128x128 bf16 bmm took 5.5 ms on 2 threads, 0.06 ms on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def browser():
    """The system Chromium, headless, through Playwright (tests/helpers_browser.py); skips when either is absent."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package)")
    if CHROMIUM is None:
        pytest.skip("no system Chromium: apt-get install -y chromium (or set $CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()

"""The exported program the referee evaluates, and the isolation of the process that evaluates it.

Every model in the repository exports and gives the same logits as its module; a program that calls anything but
ATen operators, or an archive that would unpickle Python objects, is refused; the eval process ignores the
environment, site hooks and existing bytecode; the referee's process protections are in force.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from baselines.gpt2.model import GPT2
from baselines.nanochat.depth import model_dims
from baselines.nanochat.model import GPT
from harness.evaluate import EvalProcess, isolated_command
from harness.export import ExportError, _tensors_only, export_model, load_program
from harness.fileio import sha256_file

VOCAB = 512


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "nanochat": GPT(model_dims(2, VOCAB), seq_len=64),
        "gpt2": GPT2(depth=2, vocab_size=VOCAB, max_len=256),
    }


@pytest.mark.parametrize("name", ["nanochat", "gpt2"])
def test_every_baseline_model_exports_and_the_program_gives_its_logits_at_any_length(name, tmp_path, one_thread):
    model = models()[name].eval()
    path = export_model(model, tmp_path / "model.pt2", seq_len=64, vocab_size=VOCAB, device="cpu")
    program = load_program(path, sha256_file(path))
    for length in (1, 5, 64, 200):
        inputs = torch.randint(0, VOCAB, (3, length))
        with torch.no_grad():
            assert torch.allclose(program(inputs), model(inputs), atol=1e-5), length
    assert program.max_len in (None, 256)  # gpt2 has 256 learned positions here; nanochat's rotary has no limit


def test_a_program_with_a_changed_digest_is_refused(tmp_path):
    path = export_model(models()["nanochat"], tmp_path / "model.pt2", seq_len=64, vocab_size=VOCAB, device="cpu")
    with pytest.raises(ExportError, match="does not match the digest"):
        load_program(path, "0" * 64)


def test_a_program_calling_a_custom_operator_is_refused(tmp_path):
    @torch.library.custom_op("speedrun_test::scale", mutates_args=())
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @scale.register_fake
    def _(x):
        return torch.empty_like(x)

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, 8)

        def forward(self, idx):
            return scale(self.embed(idx))

    path = export_model(Custom(), tmp_path / "model.pt2", seq_len=16, vocab_size=VOCAB, device="cpu")
    with pytest.raises(ExportError, match="speedrun_test.scale"):
        load_program(path, sha256_file(path))


def test_loading_a_program_never_unpickles_python_objects(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran code",))

    blob = tmp_path / "object.pt"
    torch.save({"x": Payload()}, blob)
    with _tensors_only():
        with pytest.raises(ExportError, match="plain tensors only"):
            pickle.loads(pickle.dumps(Payload()))
        with pytest.raises(pickle.UnpicklingError):
            torch.load(blob, weights_only=False)  # forced to weights_only=True
    assert pickle.loads(pickle.dumps([1, 2])) == [1, 2]  # restored afterwards


def test_a_model_that_cannot_export_is_named_with_the_reason(tmp_path):
    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, 8)

        def forward(self, idx):
            x = self.embed(idx)
            return x if x.sum() > 0 else -x  # Python control flow on a tensor's value

    with pytest.raises(ExportError, match="torch.export could not export model"):
        export_model(DataDependent(), None, seq_len=16, vocab_size=VOCAB, device="cpu")


def test_the_eval_process_ignores_environment_startup_hooks_and_existing_bytecode(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    marker = tmp_path / "ran"
    (hooks / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    pycache = tmp_path / "pycache"
    cmd = isolated_command(["--help"], pycache)
    env = {"PYTHONPATH": str(hooks), "PYTHONSTARTUP": str(hooks / "sitecustomize.py"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "python -m harness.evaluate" in proc.stdout
    assert not marker.exists()  # neither PYTHONPATH's sitecustomize nor PYTHONSTARTUP ran
    assert list(pycache.rglob("evaluate*.pyc"))  # the referee's code was compiled afresh into the given cache
    assert "-I" in cmd and "-S" in cmd


def test_the_eval_process_started_early_imports_then_waits_untraceable_for_its_arguments(tmp_path, capfd):
    """The referee starts its eval process before training (its start overlaps the data setup): by the time it
    says it is ready its bytecode is written (the installation check spans the worker's life, which starts
    after), it runs nothing until given its arguments, and the worker cannot trace it meanwhile."""
    pycache = tmp_path / "pycache"
    evals = EvalProcess(pycache, tmp_path / "evals" / "stderr.txt")
    try:
        assert evals.writes_bytecode  # an empty cache: the referee waits for it before any submission code runs
        evals.wait_ready(300)
        compiled = {path.name.split(".")[0] for path in pycache.rglob("*.pyc")}
        assert {"core", "bpb", "export", "serialize"} <= compiled
        assert evals.poll() is None  # waiting
        if sys.platform == "linux":
            assert os.stat(f"/proc/{evals.pid}/environ").st_uid == 0  # not dumpable: no ptrace, no /proc/<pid>/mem
        evals.go(["--help"])
        assert evals.proc.wait(timeout=60) == 0
        assert "python -m harness.evaluate" in capfd.readouterr().out  # main() ran with the arguments it was given
    finally:
        if evals.poll() is None:
            evals.kill()
    # With the cache filled, the next one reads it and writes nothing: it may start while submission code runs.
    before = {path: path.stat().st_ctime for path in pycache.rglob("*")}
    again = EvalProcess(pycache, tmp_path / "evals" / "stderr2.txt")
    try:
        assert not again.writes_bytecode
        again.wait_ready(300)
        assert {path: path.stat().st_ctime for path in pycache.rglob("*")} == before
    finally:
        again.kill()


def test_an_eval_process_that_cannot_start_is_named_with_its_error(tmp_path):
    evals = EvalProcess(tmp_path / "pycache", tmp_path / "evals" / "stderr.txt")
    evals.kill()  # dies before it is ready, as a broken installation would make it
    with pytest.raises(OSError, match="the referee's eval process did not start"):
        evals.wait_ready(60)


def test_the_referee_is_a_subreaper_and_cannot_be_traced(tmp_path):
    probe = textwrap.dedent(
        """
        import ctypes, ctypes.util
        from harness.watch import become_subreaper
        become_subreaper()
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        flag = ctypes.c_int()
        libc.prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        print(flag.value, libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
        """
    )
    if not hasattr(ctypes, "CDLL") or sys.platform != "linux":
        pytest.skip("Linux only")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.stdout.split() == ["1", "0"], proc.stderr

"""The trained model as a program: exported by the worker with torch.export, run by the referee's eval process.

    export_model(model, path, seq_len=256, vocab_size=4096, device="cpu")    # worker: model(inputs) -> logits
    program = load_program(path, sha256)                                    # eval process: no submission code
    logits = program(inputs)                                                # (B, T) int64 -> (B, T, V) float32

The exported program is a graph of PyTorch operators plus the weights: the eval process runs it without
importing the submission, the baselines or anything the submission could have patched. Sequence length and
batch are dynamic (``Dim.AUTO``): the exporter records the lengths the model accepts (a model with 1,024
learned positions, or rotary tables of 4 * seq_len, accepts up to that) and the program pads short inputs on
the right, which cannot change a causal model's logits at the real positions, up to its minimum length.

Loading is hardened because the worker wrote the file: the program may call only ATen and prims operators
(no custom ops, no Python callbacks), and nothing in the archive is unpickled beyond plain tensors.
"""

from __future__ import annotations

import math
import operator
import pickle
from contextlib import contextmanager
from pathlib import Path

import sympy
import torch
from torch.export import Dim

from harness.fileio import sha256_file

ALLOWED_NAMESPACES = ("aten", "prims")
# Python functions the exporter emits for arithmetic on symbolic sizes (dynamic shapes).
SIZE_OPERATORS = ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le", "gt", "ge")
ALLOWED_FUNCTIONS = {getattr(operator, name) for name in (*SIZE_OPERATORS, "getitem")} | {
    math.ceil,
    math.floor,
    math.sqrt,
    torch.sym_max,
    torch.sym_min,
    torch.sym_float,
    torch.sym_int,
    torch.sym_sqrt,
    torch.sym_not,
}
EXPORT_FIX = (
    "The harness evaluates the trained model as a torch.export program: model(inputs) must trace with plain "
    "tensors in and logits out (no data-dependent Python control flow on tensor values, no custom ops); "
    "see https://pytorch.org/docs/stable/export.html"
)


class ExportError(Exception):
    """The model cannot be exported, or an exported file is not a program the referee will run."""


class _Logits(torch.nn.Module):
    """``model(inputs)`` as a one-argument module, the shape the evals call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


def export_model(model: torch.nn.Module, path: Path | None, seq_len: int, vocab_size: int, device) -> Path | None:
    """Export ``model(inputs)`` in eval mode with dynamic batch and length; save it at ``path`` (None: only check).

    Raises ExportError with the exporter's reason. The model's train/eval mode is restored afterwards.
    """
    module = getattr(model, "_orig_mod", model)  # a torch.compile'd module exports its original
    example = torch.randint(0, vocab_size, (2, seq_len), device=device)
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(_Logits(module), (example,), dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the reason is in the message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.export could not export model(inputs): {type(exc).__name__}: {first}. "
                          f"{EXPORT_FIX}") from exc  # fmt: skip
    finally:
        module.train(training)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, path)
    return path


class Program:
    """A loaded program as a callable ``(B, T) int64 -> (B, T, V) float32``, within the lengths it accepts."""

    def __init__(self, program: torch.export.ExportedProgram, device: str):
        self.module = program.module().to(device)
        self.min_len, self.max_len = _length_range(program)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        length = inputs.size(1)
        if self.max_len is not None and length > self.max_len:
            raise ValueError(f"a sequence of {length} tokens is longer than the {self.max_len} the model accepts")
        if length < self.min_len:  # right padding cannot change a causal model's earlier positions
            pad = inputs[:, -1:].expand(-1, self.min_len - length)
            return self.module(torch.cat([inputs, pad], dim=1))[:, :length]
        return self.module(inputs)


def load_program(path: Path, sha256: str, device: str = "cpu") -> Program:
    """Load an exported program after checking its digest, its operators and that it holds only tensors."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no exported model at {path}; the run did not finish exporting it")
    if sha256_file(path) != sha256:
        raise ExportError(f"{path} does not match the digest the referee recorded when the worker exited")
    try:
        with _tensors_only():
            program = torch.export.load(path)
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in zipfile, json, torch or here
        raise ExportError(
            f"{path} is not a torch.export program the referee runs: {type(exc).__name__}: {exc}"
        ) from None
    check_operators(program, path)
    return Program(program, device)


def check_operators(program: torch.export.ExportedProgram, path: Path) -> None:
    """Refuse a program that calls anything but ATen/prims operators, size arithmetic and the two wrappers that
    only switch a mode around a subgraph (autocast, grad), whose subgraphs are checked the same way."""
    from torch._higher_order_ops.wrap import wrap_with_autocast, wrap_with_set_grad_enabled

    modes = (wrap_with_autocast, wrap_with_set_grad_enabled)
    graphs = [program.graph_module]
    while graphs:
        module = graphs.pop()
        for node in module.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            if node.op == "get_attr":
                value = getattr(module, node.target, None)
                if isinstance(value, torch.fx.GraphModule):
                    graphs.append(value)
                continue
            target = node.target
            allowed = node.op == "call_function" and (
                (isinstance(target, torch._ops.OpOverload) and target.namespace in ALLOWED_NAMESPACES)
                or target in ALLOWED_FUNCTIONS
                or target in modes
            )
            if not allowed:
                raise ExportError(
                    f"{path}: the program calls {node.op} {target!r}; the referee runs only ATen and prims operators"
                )


def _length_range(program: torch.export.ExportedProgram) -> tuple[int, int | None]:
    """The sequence lengths the program accepts, from the exporter's range constraints on dimension 1."""
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in _user_inputs(program))
    size = placeholder.meta["val"].shape[1]
    if isinstance(size, int):
        return size, size
    ranges = program.range_constraints.get(size.node.expr)
    if ranges is None:
        return 1, None
    upper = ranges.upper  # a sympy integer, or torch's int_oo / sympy's oo when unbounded
    return int(ranges.lower), (int(upper) if isinstance(upper, sympy.Integer) else None)


def _user_inputs(program: torch.export.ExportedProgram) -> set[str]:
    return {spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"}


@contextmanager
def _tensors_only():
    """torch.export.load falls back to full unpickling (which runs code) for some payloads: allow tensors only."""
    load, loads, load_obj = torch.load, pickle.loads, torch._C._pickle_load_obj

    def refuse(*args, **kwargs):
        raise ExportError("the archive holds pickled Python objects; the referee loads plain tensors only")

    torch.load = lambda f, *args, **kwargs: load(f, *args, **{**kwargs, "weights_only": True})
    pickle.loads = torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads, torch._C._pickle_load_obj = load, loads, load_obj

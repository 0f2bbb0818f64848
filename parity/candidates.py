"""Candidates: the user's implementation of darknet's [yolo] loss, run as darknet's delta.

A candidate is a callable ``fn(input, truth, config)`` on torch tensors:
``input`` is the raw head, ``truth`` darknet's ``[batch, max_boxes, 6]``
float32 rows (x, y, w, h, class, track), ``config`` a ``YoloConfig``. Ports
return one of three things, so the harness accepts all three and converts to
darknet's delta (target minus prediction, what darknet's backward adds):

* ``"delta"``: darknet's own sign;
* ``"grad"``: the gradient w.r.t. the raw head, ``-delta`` for a perfect port;
* ``"loss"``: a scalar; autograd gives the gradient, and the delta is ``-grad``.

Undeclared (``convention=None``), a scalar is a loss, and a tensor shaped like
the input is told apart by its sign on the objectness of cells darknet treats
as plain negatives: darknet writes ``-p`` there, a gradient is ``+p``.

Layouts: darknet's ``"nchw"`` ``[b, n*(5+c), h, w]`` or ``"bnhwc"``
``[b, n, h, w, 5+c]``. The candidate receives and returns its own layout;
the delta handed back is always NCHW float32 numpy.

Worker processes re-create a candidate from ``Candidate.spec()`` with
``load_candidate`` (pickling a ``Candidate`` does exactly that), so the
callable itself never needs to be picklable.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import sysconfig
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .case import Case
from .config import YoloConfig
from .errors import CaseTimeout, InputError, Interrupted, ParityError
from .frameworks import FRAMEWORKS, detect_framework, run_foreign
from .naive import naive_yolo_loss
from .roles import ROLE_BEST_ANCHOR, ROLE_EXTRA_ANCHOR, ROLE_IGNORED, ROLE_OBJ_NONFINITE, ROLE_TRUTH_THRESH
from .torch_layer import yolo_forward

CONVENTIONS = ("delta", "grad", "loss")
LAYOUTS = ("nchw", "bnhwc")
LAYOUT_SHAPES = {"nchw": "[b, n*(5+c), h, w]", "bnhwc": "[b, n, h, w, 5+c]"}
CONVENTION_HINT = "declare it (--convention delta|grad|loss, or convention=... in Python)"

# Roles whose objectness delta is not darknet's plain negative -p.
_NOT_PLAIN_NEGATIVE = (ROLE_IGNORED | ROLE_TRUTH_THRESH | ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR
                       | ROLE_OBJ_NONFINITE)

CandidateFn = Callable[[Tensor, Tensor, YoloConfig], Any]


# --- layouts ---------------------------------------------------------------------------------------

def layout_shape(shape_nchw: tuple[int, ...], config: YoloConfig, layout: str) -> tuple[int, ...]:
    """The shape an NCHW head ``shape_nchw`` has in ``layout``."""
    b, _, h, w = shape_nchw
    return tuple(shape_nchw) if layout == "nchw" else (b, config.n, h, w, 5 + config.classes)


def to_layout(t: Tensor, config: YoloConfig, layout: str) -> Tensor:
    """NCHW -> ``layout`` (a view for bnhwc; the candidate may need ``.contiguous()``)."""
    if layout == "nchw":
        return t
    b, _, h, w = t.shape
    return t.view(b, config.n, 5 + config.classes, h, w).permute(0, 1, 3, 4, 2)


def to_nchw(t: Tensor, config: YoloConfig, layout: str) -> Tensor:
    """``layout`` -> NCHW, the inverse of ``to_layout``."""
    if layout == "nchw":
        return t
    b, n, h, w, e = t.shape
    return t.permute(0, 1, 4, 2, 3).reshape(b, n * e, h, w)


# --- built-in candidates ---------------------------------------------------------------------------

def _layout_of(input: Tensor) -> str:
    """Built-ins serve either layout: a 5-d head is bnhwc."""
    return "bnhwc" if input.dim() == 5 else "nchw"


def parity_delta(input: Tensor, truth: Tensor, config: YoloConfig) -> Tensor:
    """Built-in ``"parity"``: this project's PyTorch port; returns darknet's delta."""
    layout = _layout_of(input)
    delta = yolo_forward(to_nchw(input, config, layout), truth, config).delta
    return to_layout(delta, config, layout)


def naive_loss(input: Tensor, truth: Tensor, config: YoloConfig) -> Tensor:
    """Built-in ``"naive"``: the textbook autograd loss (``parity.naive``); a scalar."""
    return naive_yolo_loss(to_nchw(input, config, _layout_of(input)).contiguous(), truth, config)


def _per_head_as_network(fn: CandidateFn, convention: str) -> Callable[..., Any]:
    """A per-head built-in as a whole-network candidate: a list of deltas, or the sum of the losses."""
    def network(inputs: list[Tensor], truth: Tensor, configs: list[YoloConfig]) -> Any:
        parts = [fn(x, truth, c) for x, c in zip(inputs, configs)]
        return torch.stack(parts).sum() if convention == "loss" else parts
    return network


BUILTINS: dict[str, tuple[CandidateFn, str]] = {
    "parity": (parity_delta, "delta"),
    "naive": (naive_loss, "loss"),
}


# --- the candidate ---------------------------------------------------------------------------------

def _check_choice(what: str, value: str | None, choices: tuple[str, ...], allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        extra = " or None (detect)" if allow_none else ""
        raise ParityError(f"unknown {what} {value!r}: expected one of {', '.join(choices)}{extra}")


def _check_device(device: str) -> None:
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParityError(f"unknown device {device!r}: {exc}") from None


def _from_spec(spec: str, convention: str | None, layout: str, device: str,
               framework: str | None = None, network: bool = False) -> Candidate:
    """Unpickling target: a worker re-loads the candidate by its spec."""
    return load_candidate(spec, convention=convention, layout=layout, device=device, framework=framework,
                          network=network)


@dataclass(frozen=True)
class Candidate:
    """A user's [yolo] loss: ``fn(input, truth, config)`` and how to read what it returns.

    ``name`` is the spec it was loaded from (``"parity"``, ``"naive"``,
    ``"module:callable"`` or ``"/abs/path/file.py:callable"``), so that
    ``load_candidate(*spec())``-style re-loading gives the same callable.
    Pickling goes through that spec: a ``Candidate`` built by hand around a
    callable its name cannot load will not unpickle.
    """

    name: str
    fn: CandidateFn
    convention: str | None = None
    layout: str = "nchw"
    device: str = "cpu"
    framework: str | None = None     # "torch", "jax" or "tf"; None: detected from the callable's module
    network: bool = False            # fn(inputs: list, truth, configs: list): every head of a sample at once

    def __post_init__(self) -> None:
        _check_choice("convention", self.convention, CONVENTIONS, allow_none=True)
        _check_choice("layout", self.layout, LAYOUTS, allow_none=False)
        _check_choice("framework", self.framework, FRAMEWORKS, allow_none=True)
        _check_device(self.device)
        if not callable(self.fn):
            raise ParityError(f"candidate {self.name!r}: {type(self.fn).__name__} is not callable")
        if self.framework is None:
            object.__setattr__(self, "framework", detect_framework(self.fn))

    def spec(self) -> tuple[str, str | None, str, str, str | None, bool]:
        """``(spec, convention, layout, device, framework, network)``: what a worker needs to re-load it."""
        return (self.name, self.convention, self.layout, self.device, self.framework, self.network)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_from_spec, self.spec())


def load_candidate(spec: str, *, convention: str | None = None, layout: str = "nchw",
                   device: str = "cpu", framework: str | None = None, network: bool = False) -> Candidate:
    """``"parity"``, ``"naive"``, ``"package.module:callable"`` or ``"path/to/file.py:callable"``.

    Deterministic: the same spec gives the same callable (modules are cached
    in ``sys.modules``; a file is cached under a name derived from its
    absolute path), so worker processes can re-load it. ``callable`` may be
    dotted (``module:Class.method``). Like ``python -m``, module specs are
    searched in the current directory too; like ``python file.py``, a file's
    folder is put on ``sys.path`` so its sibling imports work.
    """
    _check_choice("convention", convention, CONVENTIONS, allow_none=True)
    _check_choice("layout", layout, LAYOUTS, allow_none=False)
    _check_device(device)
    if spec in BUILTINS:
        fn, own = BUILTINS[spec]
        if convention not in (None, own):
            raise ParityError(f"candidate {spec!r} is built in and returns a {own}; "
                              f"convention {convention!r} does not apply")
        if network:
            fn = _per_head_as_network(fn, own)
        return Candidate(spec, fn, own, layout, device, "torch", network)
    where, attr = _split_spec(spec)
    if _is_file_spec(where):
        path = _resolve_file(where)
        module, name = _import_file(path), f"{path}:{attr}"
    else:
        module, name = _import_module(where), spec
    fn = _resolve_attr(module, where, attr)
    if not callable(fn):
        raise ParityError(f"candidate {name!r}: {attr} is a {type(fn).__name__}, not a callable "
                          "fn(input, truth, config)")
    if network and framework not in (None, "torch"):
        raise ParityError(f"candidate {name!r}: whole-network candidates are PyTorch callables")
    return Candidate(name, fn, convention, layout, device, framework, network)


def _split_spec(spec: str) -> tuple[str, str]:
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr or re.search(r"[/\\]|\.py$", attr):
        raise ParityError(f"candidate {spec!r}: expected 'parity', 'naive', 'package.module:callable' "
                          "or 'path/to/file.py:callable'")
    return where, attr


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _resolve_file(where: str) -> str:
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ParityError(f"candidate file {where!r} not found (resolved to {path})")
    return str(path)


def _import_file(path: str) -> ModuleType:
    """Import ``path`` once per process, under a name fixed by the path (deterministic)."""
    stem = re.sub(r"\W", "_", Path(path).stem)
    name = f"_parity_candidate_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ParityError(f"candidate file {path!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ParityError(f"importing candidate file {path!r} raised {_describe(exc)}") from None
    return module


def _import_module(where: str) -> ModuleType:
    """Import a module by name; the current directory is searched too, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        missing = exc.name or where
        if where == missing or where.startswith(missing + "."):
            raise ParityError(f"candidate module {where!r} not found (no module named {missing!r}); "
                              "is it installed or in the current directory?") from None
        raise ParityError(f"importing candidate module {where!r} failed: it imports {missing!r}, "
                          "which cannot be found") from None
    except Exception as exc:
        raise ParityError(f"importing candidate module {where!r} raised {_describe(exc)}") from None


def _resolve_attr(module: ModuleType, where: str, attr: str) -> Any:
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = where if i == 0 else f"{where}:{'.'.join(attr.split('.')[:i])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ParityError(f"candidate '{where}:{attr}': {owner!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    return obj


# --- errors naming the candidate's own code ---------------------------------------------------------

def _library_dirs() -> tuple[str, ...]:
    dirs = {os.path.dirname(torch.__file__), os.path.dirname(np.__file__)}
    for key in ("stdlib", "platstdlib"):
        if sysconfig.get_paths().get(key):
            dirs.add(sysconfig.get_paths()[key])
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def _own_frame(exc: BaseException, skip: int = 0) -> str:
    """``file:line in func`` of the deepest traceback frame outside torch, numpy and the stdlib.

    ``skip`` drops the harness's own frames at the top of the traceback.
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)[skip:]
    libs = _library_dirs()
    own = [f for f in frames if not os.path.realpath(f.filename).startswith(libs)] or frames
    while len(own) > 1 and own[-1].filename == __file__ and own[-1].name == "refuse":   # the os._exit guard
        own.pop()
    if not own:
        return ""
    last = own[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


def _describe(exc: BaseException, skip: int = 0) -> str:
    where = _own_frame(exc, skip)
    message = str(exc).strip() or "(no message)"
    return f"{type(exc).__name__}: {message}" + (f" (at {where})" if where else "")


def candidate_error(candidate: Candidate, exc: BaseException, during: str,
                    head: Tensor | None = None) -> ParityError:
    """What the candidate raised, in one line: the exception, the candidate's own frame, a hint."""
    hint = ""
    if head is not None and (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"):
        hint = (f"; out of memory on a head of shape {tuple(head.shape)} "
                f"({head.numel() * head.element_size() / 2**20:.1f} MiB)")
    if candidate.convention is None and "leaf Variable that requires grad" in str(exc):
        hint = ("; the input requires grad to detect a loss convention: if the candidate returns a "
                "delta or gradient, declare it (--convention delta|grad)")
    return ParityError(f"candidate {candidate.name!r} raised {during}: {_describe(exc, skip=1)}{hint}")


# --- running ---------------------------------------------------------------------------------------

@dataclass
class CandidateOutput:
    """A candidate's result as darknet's delta.

    ``nonfinite`` counts NaN/Inf elements of ``delta``: not an error here (the
    reference may produce them too; the diff decides), only a hook for reports.
    """

    delta: np.ndarray      # float32 NCHW, darknet's sign
    convention: str        # the one used (declared or detected)
    detected: bool
    nonfinite: int = 0


def run_candidate(candidate: Candidate, case: Case) -> CandidateOutput:
    """Run ``candidate`` on fresh copies of the case's tensors; its result as darknet's delta.

    Every problem with the candidate (it raises, returns the wrong thing, a
    loss that does not depend on the input) is a ``ParityError`` naming it.
    """
    config = case.config
    if candidate.framework not in (None, "torch"):
        return _run_foreign(candidate, case)
    head = fresh_input(candidate, case)
    truth = fresh_truth(case, candidate.device)
    if candidate.convention in (None, "loss"):
        head.requires_grad_()
    try:
        with no_process_exit(candidate):
            result = candidate.fn(head, truth, config)
    except (Interrupted, CaseTimeout):
        raise
    except BaseException as exc:   # SystemExit, KeyboardInterrupt, GeneratorExit too: never a pass
        raise candidate_error(candidate, exc, "when called", head) from None
    detected = candidate.convention is None
    convention = candidate.convention
    if detected and _returns_scalar(candidate, result, head, config):
        convention = "loss"
    if convention == "loss":
        delta = _loss_delta(candidate, result, head, config)
    else:
        full = full_tensor(candidate, result, head, config)
        convention = convention or detect_sign(candidate, full, case)
        delta = full if convention == "delta" else -full
    out = np.array(delta.numpy(), dtype=np.float32, copy=True)
    return CandidateOutput(out, convention, detected, int(np.count_nonzero(~np.isfinite(out))))


class ProcessExit(BaseException):
    """A candidate called ``os._exit``: turned into an exception in the process that runs the cases."""

    def __str__(self) -> str:
        return f"os._exit({self.args[0]!r}) was called (it would end the whole run)"


@contextmanager
def no_process_exit(candidate: Candidate) -> Iterator[None]:
    """``os._exit`` raises while the candidate runs in this process (a child it forks still exits).

    Otherwise a candidate calling ``os._exit(0)`` would end the run with exit
    code 0 and no report: a pass that never ran.
    """
    real, pid = os._exit, os.getpid()

    def refuse(code: int) -> None:
        if os.getpid() != pid:
            real(code)
        raise ProcessExit(code)

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real


def _run_foreign(candidate: Candidate, case: Case) -> CandidateOutput:
    """A JAX or TF candidate: its arrays in, its gradient for a loss, darknet's delta out."""
    config = case.config
    head = fresh_input(Candidate(candidate.name, candidate.fn, candidate.convention, candidate.layout, "cpu",
                                  candidate.framework), case)
    x = head.numpy()
    truth = fresh_truth(case, "cpu").numpy()
    got = run_foreign(candidate.framework, candidate.fn, x, truth, config, candidate.convention, candidate.name,
                      lambda exc, during: candidate_error(candidate, exc, during))
    detected = candidate.convention is None
    if got.grad is not None:
        convention = "loss"
        full = torch.from_numpy(np.array(got.grad, np.float32))
        delta = -to_nchw(full, config, candidate.layout).contiguous()
    else:
        value = np.asarray(got.value)
        if value.shape != x.shape:
            raise ParityError(f"candidate {candidate.name!r} returned shape {value.shape}, expected the input's "
                              f"shape {x.shape}: {_expected_shapes(head, config, candidate.layout)}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ParityError(f"candidate {candidate.name!r} returned dtype {value.dtype}; a delta, gradient or "
                              "loss must be floating point")
        full = to_nchw(torch.from_numpy(np.array(value, np.float32)), config, candidate.layout).contiguous()
        convention = candidate.convention or detect_sign(candidate, full, case)
        delta = full if convention == "delta" else -full
    out = np.array(delta.numpy(), dtype=np.float32, copy=True)
    return CandidateOutput(out, convention, detected, int(np.count_nonzero(~np.isfinite(out))))


def fresh_input(candidate: Candidate, case: Case) -> Tensor:
    """A float32 copy of the case input in the candidate's layout and device (a leaf)."""
    config = case.config
    x = np.asarray(case.input)
    if x.ndim != 4 or x.shape[1] != config.channels:
        raise InputError(f"case input: shape {x.shape}, expected [batch, {config.channels}, h, w] "
                         f"(n*(5+classes) = {config.n}*(5+{config.classes}))")
    t = to_layout(torch.from_numpy(np.array(x, dtype=np.float32, copy=True)), config, candidate.layout)
    return _to_device(t.contiguous(), candidate.device)


def fresh_truth(case: Case, device: str) -> Tensor:
    """The case truth as float32 ``[b, rows, 6]`` (a zero track column added to 5-column truths)."""
    truth = np.array(case.truth, dtype=np.float32, copy=True)
    if truth.ndim == 3 and truth.shape[2] == 5:
        truth = np.concatenate([truth, np.zeros(truth.shape[:2] + (1,), np.float32)], axis=2)
    return _to_device(torch.from_numpy(truth), device)


def _to_device(t: Tensor, device: str) -> Tensor:
    try:
        return t.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ParityError(f"device {device!r} is not available: {exc}") from None


def _expected_shapes(head: Tensor, config: YoloConfig, layout: str) -> str:
    nchw = tuple(to_nchw(head, config, layout).shape)
    return "; ".join(f"layout {lay!r} {LAYOUT_SHAPES[lay]}: {layout_shape(nchw, config, lay)}"
                     + (" (this candidate's)" if lay == layout else "") for lay in LAYOUTS)


def _not_a_tensor(candidate: Candidate, result: Any, head: Tensor, config: YoloConfig) -> ParityError:
    hint = " (a tuple or list: return only the loss, delta or gradient)" if isinstance(result, (tuple, list)) else ""
    return ParityError(f"candidate {candidate.name!r} returned {type(result).__name__}, not a torch tensor{hint}; "
                       f"expected a scalar loss or a delta/gradient shaped like the input "
                       f"({_expected_shapes(head, config, candidate.layout)})")


def _check_float(candidate: Candidate, result: Tensor) -> None:
    if result.layout != torch.strided:
        raise ParityError(f"candidate {candidate.name!r} returned a {result.layout} tensor; return a dense "
                          "(strided) tensor (e.g. .to_dense())")
    if result.is_meta:
        raise ParityError(f"candidate {candidate.name!r} returned a tensor on the 'meta' device, which holds no "
                          "values; return a CPU or CUDA tensor")
    if not result.is_floating_point():
        raise ParityError(f"candidate {candidate.name!r} returned dtype {result.dtype}; a delta, gradient "
                          "or loss must be a floating-point tensor")


def _is_scalar(result: Tensor) -> bool:
    return result.dim() == 0 or result.numel() == 1


def _returns_scalar(candidate: Candidate, result: Any, head: Tensor, config: YoloConfig) -> bool:
    """Undeclared convention, first step: a scalar is a loss; anything else must be a full tensor."""
    if not isinstance(result, Tensor):
        raise _not_a_tensor(candidate, result, head, config)
    _check_float(candidate, result)
    return _is_scalar(result)


def full_tensor(candidate: Candidate, result: Any, head: Tensor, config: YoloConfig) -> Tensor:
    """A delta or gradient, checked, as a detached CPU float32 NCHW tensor."""
    if not isinstance(result, Tensor):
        raise _not_a_tensor(candidate, result, head, config)
    _check_float(candidate, result)
    if tuple(result.shape) != tuple(head.shape):
        raise ParityError(f"candidate {candidate.name!r} returned shape {tuple(result.shape)}, expected the "
                          f"input's shape {tuple(head.shape)}: {_expected_shapes(head, config, candidate.layout)}"
                          f"{_shape_hint(candidate, result, head, config)}")
    return to_nchw(result.detach().to("cpu", torch.float32), config, candidate.layout).contiguous()


def _shape_hint(candidate: Candidate, result: Tensor, head: Tensor, config: YoloConfig) -> str:
    nchw = tuple(to_nchw(head, config, candidate.layout).shape)
    for lay in LAYOUTS:
        if lay != candidate.layout and tuple(result.shape) == layout_shape(nchw, config, lay):
            return f"; it is the {lay!r} shape: declare the layout (--layout {lay})"
    if _is_scalar(result):
        return "; a scalar is a loss: declare convention 'loss' or leave it undeclared"
    return ""


def _loss_delta(candidate: Candidate, result: Any, head: Tensor, config: YoloConfig) -> Tensor:
    """``-d loss / d input`` as CPU float32 NCHW.

    ``torch.autograd.grad`` rather than ``backward()``: the same gradient,
    without accumulating into the candidate's own parameters.
    """
    if not isinstance(result, Tensor):
        raise _not_a_tensor(candidate, result, head, config)
    _check_float(candidate, result)
    if not _is_scalar(result):
        raise ParityError(f"candidate {candidate.name!r}: convention 'loss' expects a scalar (0-d or one "
                          f"element) tensor, got shape {tuple(result.shape)}")
    grad = None
    if result.requires_grad:
        try:
            (grad,) = torch.autograd.grad(result.reshape(()), head, allow_unused=True)
        except Exception as exc:
            raise candidate_error(candidate, exc, "in backward") from None
    if grad is None:
        raise ParityError(f"candidate {candidate.name!r} returned a loss that does not depend on the input "
                          "(no gradient flows to it): compute it from the input tensor without detach(), "
                          "no_grad() or numpy, or return a delta/gradient and declare that convention")
    return -to_nchw(grad.detach().to("cpu", torch.float32), config, candidate.layout).contiguous()


def _plain_negative_objectness(case: Case) -> tuple[Tensor, Tensor]:
    """darknet's objectness delta ``[b, n, h, w]`` and the mask of its plain negatives (delta ``-p``)."""
    config = case.config
    x = torch.from_numpy(np.array(case.input, dtype=np.float32, copy=True))
    run = yolo_forward(x, fresh_truth(case, "cpu"), config, case.flavor)
    b, _, h, w = run.delta.shape
    obj = run.delta.view(b, config.n, 5 + config.classes, h, w)[:, :, 4]
    return obj, (run.roles.cpu() & _NOT_PLAIN_NEGATIVE) == 0


def detect_sign(candidate: Candidate, full: Tensor, case: Case) -> str:
    """``"delta"`` or ``"grad"``: does the candidate's sign on plain negatives agree with darknet's?"""
    ref_obj, plain = _plain_negative_objectness(case)
    config = case.config
    b, _, h, w = full.shape
    cand_obj = full.view(b, config.n, 5 + config.classes, h, w)[:, :, 4]
    signs = torch.sign(cand_obj[plain]) * torch.sign(ref_obj[plain])
    agree, oppose = int((signs > 0).sum()), int((signs < 0).sum())
    if agree > oppose:
        return "delta"
    if oppose > agree:
        return "grad"
    raise ParityError(f"candidate {candidate.name!r}: cannot tell a delta from a gradient: on the "
                      f"{int(plain.sum())} objectness entries darknet treats as plain negatives (delta -p, "
                      f"gradient +p) its sign agrees with darknet's delta {agree} times and opposes it "
                      f"{oppose} times; {CONVENTION_HINT}")

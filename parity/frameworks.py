"""Candidates written in JAX or TensorFlow: their inputs, their result, their gradient.

A port need not be PyTorch. A JAX or TF candidate ``fn(input, truth,
config)`` receives its own framework's arrays (float32, in its declared
layout) and returns a scalar loss or a delta/gradient shaped like the input,
exactly as a torch candidate does. For a loss, the harness takes the
gradient with the framework's own machinery (``jax.grad``,
``tf.GradientTape``). Inputs are handed over through DLPack where the
framework allows (no copy on the CPU), else copied. Neither framework is a
dependency: each is imported only when a candidate uses it.
"""
from __future__ import annotations

import importlib
import types
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ParityError

FRAMEWORKS = ("torch", "jax", "tf")
_MODULE_OF = {"jax": "jax", "tf": "tensorflow"}


def detect_framework(fn: Callable[..., Any]) -> str:
    """"jax" or "tf" if ``fn``'s own code refers to those modules (or names imported from them), else "torch".

    Reads the global names ``fn`` uses, not its whole module: a test file
    may import both. A callable that reaches JAX or TF only through helpers
    needs ``framework=`` (``--framework``).
    """
    target = fn if hasattr(fn, "__code__") else getattr(fn, "__call__", fn)
    code, names = getattr(target, "__code__", None), getattr(target, "__globals__", {})
    if code is None:
        return "torch"
    used = set(code.co_names)
    for const in code.co_consts:                      # nested functions and lambdas
        if hasattr(const, "co_names"):
            used |= set(const.co_names)
    for name in used:
        value = names.get(name)
        mod = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", "") or ""
        top = mod.split(".", 1)[0]
        if top in ("jax", "jaxlib"):
            return "jax"
        if top == "tensorflow":
            return "tf"
    return "torch"


def _import(framework: str) -> Any:
    try:
        return importlib.import_module(_MODULE_OF[framework])
    except ImportError as exc:
        raise ParityError(f"the candidate is a {framework} candidate but {_MODULE_OF[framework]} cannot be "
                          f"imported here: {exc}") from None


@dataclass
class ForeignResult:
    """What a JAX/TF candidate returned, as numpy: a scalar loss with its gradient, or a full tensor."""

    value: np.ndarray          # the returned array (0-d for a loss)
    grad: np.ndarray | None    # d loss / d input, for a scalar loss


# Turns what a candidate raised into the ParityError the harness reports (parity.candidates.candidate_error).
RaisedFn = Callable[[BaseException, str], ParityError]


def run_foreign(framework: str, fn: Callable[..., Any], x: np.ndarray, truth: np.ndarray, config: Any,
                convention: str | None, name: str, raised: RaisedFn) -> ForeignResult:
    """Call ``fn`` on ``framework`` arrays; for a scalar result (or convention "loss") also its gradient.

    ``raised(exc, during)`` words an exception of the candidate's.
    """
    if framework == "jax":
        return _run_jax(fn, x, truth, config, convention, name, raised)
    if framework == "tf":
        return _run_tf(fn, x, truth, config, convention, name, raised)
    raise ParityError(f"unknown framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")


def _scalar(shape: tuple[int, ...]) -> bool:
    return len(shape) == 0 or int(np.prod(shape)) == 1


def _jax_array(jax: Any, a: np.ndarray) -> Any:
    try:
        return jax.dlpack.from_dlpack(np.ascontiguousarray(a))    # zero copy on the CPU where aligned
    except Exception:  # noqa: BLE001 - any refusal just means a copy
        return jax.numpy.asarray(a)


def _run_jax(fn: Callable[..., Any], x: np.ndarray, truth: np.ndarray, config: Any, convention: str | None,
             name: str, raised: RaisedFn) -> ForeignResult:
    jax = _import("jax")
    import jax.dlpack  # noqa: F401 - the submodule is not imported by `import jax` everywhere

    xj, tj = _jax_array(jax, x), _jax_array(jax, truth)
    try:
        out = fn(xj, tj, config)
    except Exception as exc:
        raise raised(exc, "when called") from None
    def grad() -> Any:
        try:
            return jax.grad(lambda v: fn(v, tj, config).reshape(()))(xj)
        except Exception as exc:
            raise raised(exc, "in jax.grad") from None
    return _result(np.asarray(out), convention, name, grad)


def _run_tf(fn: Callable[..., Any], x: np.ndarray, truth: np.ndarray, config: Any, convention: str | None,
            name: str, raised: RaisedFn) -> ForeignResult:
    tf = _import("tf")
    xt, tt = tf.convert_to_tensor(x), tf.convert_to_tensor(truth)
    try:
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = fn(xt, tt, config)
    except Exception as exc:
        raise raised(exc, "when called") from None
    def grad() -> Any:
        g = tape.gradient(out, xt)
        if g is None:
            raise ParityError(f"candidate {name!r} returned a loss that does not depend on the input "
                              "(GradientTape found no gradient)")
        return g
    return _result(np.asarray(out), convention, name, grad)


def _result(value: np.ndarray, convention: str | None, name: str, grad: Callable[[], Any]) -> ForeignResult:
    """A scalar (or a declared loss) with its gradient; anything else as returned."""
    if convention == "loss" or (convention is None and _scalar(value.shape)):
        if not _scalar(value.shape):
            raise ParityError(f"candidate {name!r}: convention 'loss' expects a scalar, got shape {value.shape}")
        return ForeignResult(value.reshape(()), np.asarray(grad(), np.float32))
    return ForeignResult(value, None)

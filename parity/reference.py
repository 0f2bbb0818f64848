"""The reference: darknet's [yolo] training forward pass, from our C or a real libdarknet.

``run_reference(config, input, truth, flavor=...)`` returns a
``parity.result.LayerRun``: darknet's ``output``, ``delta`` (darknet's sign:
target minus prediction) and ``stats``. The C reference
(``parity.backends.c_reference``) also reports per-cell decisions
(``roles``, bits in ``parity.roles``) and how often each darknet branch ran
(``branches``); a real libdarknet (``parity.backends.libdarknet``) reports
only what darknet itself exposes (output, delta, cost and, for AlexeyAB,
counters).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .backends.c_reference import run_c_reference
from .backends.libdarknet import run_libdarknet
from .config import YoloConfig, backward_scale
from .errors import InputError, ParityError
from .layer_input import check_flavor, check_layer_input
from .result import LayerRun


def run_reference(config: YoloConfig, input: Any, truth: Any, flavor: str | None = None, *,
                  backend: str = "c", darknet_lib: str | None = None, darknet_include: str | None = None,
                  backward: str = "cpu", loss_scale: float = 1.0, decisions: bool = False) -> LayerRun:
    """Run darknet's [yolo] training forward pass on one batch.

    Args:
        config: the layer's options (``load_case(...).config`` or the ``parity.cfg`` parsers).
        input (ndarray[batch, n*(5+classes), h, w]): the raw head tensor, before activation.
        truth (ndarray[batch, rows, 6 or 5]): x, y, w, h, class, track per box; darknet's
            terminator rules apply (reading stops at the first x == 0, and after ``max`` rows).
        flavor: ``"alexeyab"`` or ``"pjreddie"``; defaults to ``config.flavor``.
        backend: ``"c"`` (our reference) or ``"libdarknet"`` (a real darknet library:
            ``darknet_lib`` is its ``libdarknet.so``, ``darknet_include`` the folder holding
            its ``darknet.h``; both default to Debian's package paths).
        backward: which darknet backward the returned delta stands for: ``"cpu"`` (default,
            darknet's CPU semantics: the layer's delta as is) or ``"gpu"`` (AlexeyAB's GPU
            backward: delta * loss_scale * delta_normalizer; ``parity.config.backward_scale``).
        loss_scale: darknet's [net] ``loss_scale`` (default 1), used by ``backward="gpu"``.
        decisions: also return the C reference's decisions (``LayerRun.decisions``: best IoU
            and truth per slot, class match, best anchors, assignments, averaging divisors),
            exported by the pass that made them. A real libdarknet has none to give.

    Returns:
        LayerRun with float32 ``output`` and ``delta`` in darknet's layout, ``stats``
        (``LayerStats``), and for the C reference ``roles`` and ``branches``.
    """
    if not isinstance(config, YoloConfig):
        raise InputError(f"config must be a parity.config.YoloConfig, got {type(config).__name__}")
    flavor = check_flavor(flavor or config.flavor)
    x, t, shape = check_layer_input(config, input, truth, flavor)
    if backend == "c":
        result = run_c_reference(config, x, t, flavor, shape, decisions)
    elif backend == "libdarknet":
        if decisions:
            raise ParityError("a real libdarknet exposes no decisions: take them from the C reference's run")
        result = run_libdarknet(config, x, t, flavor, lib_path=darknet_lib, include_dir=darknet_include)
    else:
        raise ParityError(f"unknown reference backend {backend!r}: expected 'c' or 'libdarknet'")
    scale = backward_scale(config, flavor, backward, loss_scale)
    if scale is not None:
        result.delta *= np.float32(scale)
    return result

"""darknet-parity: darknet's [yolo] layer training semantics, executable and comparable.

Stable API::

    from parity import load_case, run_reference
    case = load_case("x.npz")
    res = run_reference(case.config, case.input, case.truth, flavor=case.flavor)
    res.output, res.delta, res.stats

Names are imported lazily so the CLI's ``--help`` and the pytest plugin load
without numpy-heavy or compiled parts.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_case": ("parity.case", "load_case"),
    "save_case": ("parity.case", "save_case"),
    "Case": ("parity.case", "Case"),
    "run_reference": ("parity.reference", "run_reference"),
    "LayerRun": ("parity.result", "LayerRun"),
    "LayerStats": ("parity.result", "LayerStats"),
    "YoloConfig": ("parity.config", "YoloConfig"),
    "load_cfg": ("parity.cfg", "load_cfg"),
    "parse_cfg": ("parity.cfg", "parse_cfg"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'parity' has no attribute {name!r}")

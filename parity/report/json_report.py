"""The machine-readable view: ``SuiteResult.to_json`` written with sorted keys.

Sorted keys and a fixed indent make two runs with the same results give the
same bytes (diffable in CI); ``SuiteResult.load`` reads the file back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_atomic

if TYPE_CHECKING:
    from ..suite import SuiteResult


def _plain(value: Any) -> Any:
    """numpy scalars and arrays that slipped into meta/evidence, as plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def dumps(result: "SuiteResult") -> str:
    """The JSON text of ``result`` (what ``write_json`` writes)."""
    return json.dumps(result.to_json(), indent=1, sort_keys=True, default=_plain) + "\n"


def write_json(result: "SuiteResult", path: str | Path) -> Path:
    """Write ``result`` to ``path`` (parents created); returns the path for ``SuiteResult.load``."""
    return write_atomic(path, dumps(result).encode("utf-8"))

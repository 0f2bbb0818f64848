"""The tolerance rule: when a candidate's value agrees with the reference's. One rule, used everywhere.

Values agree when ``|cand - ref| <= atol + rtol*|ref|`` (defaults 1e-5 and
1e-4, per term overridable from a YAML file), NaN agrees only with NaN and an
infinity only with itself. Decisions (whether darknet wrote a delta at all:
zero vs nonzero) are never a tolerance question; ``parity.compare`` counts
them apart. Ground floor: imports only ``parity.errors``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from .errors import ParityError

ATOL = 1e-5
RTOL = 1e-4
TERMS = ("x", "y", "w", "h", "obj", "cls")
DEFAULT_TOLERANCE_FILE = Path(__file__).resolve().parent / "tolerances.yaml"


def within(cand: np.ndarray, ref: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> np.ndarray:
    """Elementwise agreement under the tolerance rule (NaN == NaN, inf == same inf)."""
    cand64 = np.asarray(cand, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        close = np.abs(cand64 - ref64) <= atol + rtol * np.abs(ref64)
    both_nan = np.isnan(cand64) & np.isnan(ref64)
    same_inf = np.isinf(ref64) & (cand64 == ref64)
    return close | both_nan | same_inf


@dataclass(frozen=True)
class Tolerance:
    """|cand - ref| <= atol + rtol*|ref|."""

    atol: float = ATOL
    rtol: float = RTOL

    def within(self, cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return within(cand, ref, self.atol, self.rtol)


@dataclass(frozen=True)
class ToleranceRule:
    """A default tolerance and per-term overrides (from a checked-in YAML file)."""

    default: Tolerance = Tolerance()
    terms: Mapping[str, Tolerance] = field(default_factory=dict)
    source: str = "built-in defaults"

    def for_term(self, term: str) -> Tolerance:
        base = term if term in self.terms else ("cls" if term.startswith("cls") else term)
        return self.terms.get(base, self.default)

    def describe(self) -> str:
        d = self.default
        text = f"|cand - ref| <= {d.atol:g} + {d.rtol:g}*|ref|"
        extra = ", ".join(f"{t}: {v.atol:g} + {v.rtol:g}*|ref|" for t, v in sorted(self.terms.items()))
        return f"{text}{' (' + extra + ')' if extra else ''} [{self.source}]"

    def as_dict(self) -> dict[str, Any]:
        return {"default": dataclasses.asdict(self.default),
                "terms": {k: dataclasses.asdict(v) for k, v in self.terms.items()}, "source": self.source}


def load_tolerances(path: str | Path | None = None) -> ToleranceRule:
    """The tolerance rule from YAML: ``default: {atol, rtol}`` and ``terms: {x: {atol, rtol}, ...}``."""
    path = Path(path) if path is not None else DEFAULT_TOLERANCE_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParityError(f"{path}: cannot read the tolerance file: {exc}") from exc

    def tol(value: Any, where: str) -> Tolerance:
        if not isinstance(value, Mapping) or set(value) - {"atol", "rtol"}:
            raise ParityError(f"{path}: {where} must be a mapping with atol and/or rtol")
        try:
            t = Tolerance(float(value.get("atol", ATOL)), float(value.get("rtol", RTOL)))
        except (TypeError, ValueError) as exc:
            raise ParityError(f"{path}: {where}: {exc}") from exc
        if not (0 <= t.atol < float("inf") and 0 <= t.rtol < float("inf")):   # NaN fails too
            raise ParityError(f"{path}: {where}: tolerances must be finite numbers >= 0, got atol={t.atol:g}, "
                              f"rtol={t.rtol:g}")
        return t

    if not isinstance(data, Mapping) or set(data) - {"default", "terms"}:
        raise ParityError(f"{path}: expected keys 'default' and 'terms'")
    default = tol(data.get("default", {}), "default")
    terms = {}
    for name, value in (data.get("terms") or {}).items():
        if name not in TERMS and not (str(name).startswith("cls") and str(name)[3:].isdigit()):
            raise ParityError(f"{path}: unknown term {name!r}; terms are {', '.join(TERMS)} (or cls<k>)")
        terms[str(name)] = tol(value, f"terms.{name}")
    return ToleranceRule(default, terms, str(path))

"""The tolerance rule: when a candidate's value agrees with the reference's. One rule, used everywhere.

Values agree when ``|cand - ref| <= atol + rtol*|ref|`` (defaults 1e-5 and
1e-4, per term overridable from a YAML file), NaN agrees only with NaN and an
infinity only with itself. Decisions (whether darknet wrote a delta at all:
zero vs nonzero) are never a tolerance question; ``parity.compare`` counts
them apart. Ground floor: imports only ``parity.errors``.

One extension, for a reference known to be darknet's default ``-Ofast``
build (its recording's meta says so, or the user declares it): its box
deltas drift from the source's semantics (``-O2``) by more than the rule on
the DIoU/CIoU paths, in slots written twice. An element of the ``ofast``
terms outside the rule but within the ``ofast`` bound is then *-Ofast
drift*: counted and reported, not a failure. Decisions, NaN/Inf and every
other term keep the rule; the C reference and ``-O2`` references never get
the bound (``ToleranceRule.for_build``).
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
# The -Ofast bound (tolerances.yaml states and explains it): measured on the
# AlexeyAB -Ofast recordings against -O2, up to 1.8e-4 abs / 1.5e-3 rel.
OFAST_ATOL = 2e-4
OFAST_RTOL = 2e-3
OFAST_TERMS = ("x", "y", "w", "h")
BUILDS = ("o2", "ofast")            # strict semantics (the source's, the C reference's), darknet's default build


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
    """A default tolerance, per-term overrides and the -Ofast bound (from a checked-in YAML file).

    ``reference_build`` is the build of the reference this rule judges
    against: "o2" (strict: the source's semantics) or "ofast" (darknet's
    default build: the ``ofast`` bound excuses drift on ``ofast_terms``).
    """

    default: Tolerance = Tolerance()
    terms: Mapping[str, Tolerance] = field(default_factory=dict)
    source: str = "built-in defaults"
    ofast: Tolerance = Tolerance(OFAST_ATOL, OFAST_RTOL)
    ofast_terms: tuple[str, ...] = OFAST_TERMS
    reference_build: str = "o2"

    def for_term(self, term: str) -> Tolerance:
        base = term if term in self.terms else ("cls" if term.startswith("cls") else term)
        return self.terms.get(base, self.default)

    def for_build(self, build: str) -> "ToleranceRule":
        """This rule judging against a reference of ``build`` ("o2" or "ofast")."""
        if build not in BUILDS:
            raise ParityError(f"reference build {build!r}: expected one of {', '.join(BUILDS)}")
        return self if build == self.reference_build else dataclasses.replace(self, reference_build=build)

    def drift_for_term(self, term: str) -> Tolerance | None:
        """The -Ofast bound for ``term`` where it applies (an -Ofast reference, a box term), else None."""
        if self.reference_build != "ofast":
            return None
        base = "cls" if term.startswith("cls") else term
        return self.ofast if base in self.ofast_terms else None

    def describe(self) -> str:
        d = self.default
        text = f"|cand - ref| <= {d.atol:g} + {d.rtol:g}*|ref|"
        extra = ", ".join(f"{t}: {v.atol:g} + {v.rtol:g}*|ref|" for t, v in sorted(self.terms.items()))
        text += f"{' (' + extra + ')' if extra else ''}"
        if self.reference_build == "ofast":
            text += (f"; -Ofast reference: {','.join(self.ofast_terms)} within {self.ofast.atol:g} + "
                     f"{self.ofast.rtol:g}*|ref| reported as -Ofast drift")
        return f"{text} [{self.source}]"

    def as_dict(self) -> dict[str, Any]:
        return {"default": dataclasses.asdict(self.default),
                "terms": {k: dataclasses.asdict(v) for k, v in self.terms.items()}, "source": self.source,
                "ofast": {**dataclasses.asdict(self.ofast), "terms": list(self.ofast_terms)},
                "reference_build": self.reference_build}


def build_of(description: str | None) -> str:
    """The build ("o2" or "ofast") a recording's ``meta.build`` text names; "o2" when it names no -Ofast."""
    return "ofast" if "-Ofast" in str(description or "") else "o2"


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

    if not isinstance(data, Mapping) or set(data) - {"default", "terms", "ofast"}:
        raise ParityError(f"{path}: expected keys 'default', 'terms' and 'ofast'")
    default = tol(data.get("default", {}), "default")
    ofast, ofast_terms = _ofast(path, data.get("ofast"), tol)
    terms = {}
    for name, value in (data.get("terms") or {}).items():
        if name not in TERMS and not (str(name).startswith("cls") and str(name)[3:].isdigit()):
            raise ParityError(f"{path}: unknown term {name!r}; terms are {', '.join(TERMS)} (or cls<k>)")
        terms[str(name)] = tol(value, f"terms.{name}")
    return ToleranceRule(default, terms, str(path), ofast, ofast_terms)


def _ofast(path: Path, value: Any, tol: Any) -> tuple[Tolerance, tuple[str, ...]]:
    """The ``ofast: {atol, rtol, terms: [...]}`` section (built-in bound when absent)."""
    if value is None:
        return Tolerance(OFAST_ATOL, OFAST_RTOL), OFAST_TERMS
    if not isinstance(value, Mapping):
        raise ParityError(f"{path}: ofast must be a mapping with atol, rtol and terms")
    names = value.get("terms", list(OFAST_TERMS))
    if not isinstance(names, list) or any(str(n) not in TERMS for n in names):
        raise ParityError(f"{path}: ofast.terms must be a list of terms among {', '.join(TERMS)}, got {names!r}")
    bound = tol({k: v for k, v in value.items() if k != "terms"}, "ofast")
    return bound, tuple(str(n) for n in names)

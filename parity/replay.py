"""Replaying recorded cases through a reference and checking agreement.

A recording from darknet's default ``-Ofast`` build is not the source's
semantics on NaN/Inf input (``isnan``/``isinf`` are compiled away), so such
cases are reported as skipped with that reason; their ``-O2`` twins are the
ones to reproduce.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .case import Case, load_case
from .compare import compare
from .diff import Agreement
from .errors import ParityError
from .recorded import REPO_ROOT, locate
from .reference import run_reference
from .tolerance import ToleranceRule, build_of

FIXTURES_DIR = REPO_ROOT / "fixtures"


def shared_recorded_dir() -> Path | None:
    """The real-darknet dev set (``parity.recorded.locate``): ``$DARKNET_PARITY_RECORDED`` or
    ``../shared/recorded``; None when the default folder is absent."""
    return locate().path


def case_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders to the ``.npz`` files under them, sorted; keep files as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.npz")))
        elif p.is_file():
            out.append(p)
        else:
            raise ParityError(f"{p}: no such case file or folder")
    return out


def ofast_nonfinite(case: Case) -> bool:
    """Recorded by an -Ofast build on NaN/Inf input: not darknet's source semantics."""
    return build_of(case.meta.get("build")) == "ofast" and not np.isfinite(case.input).all()


def replay_case(case: Case, *, reference: str = "c", darknet_lib: str | None = None,
                darknet_include: str | None = None, rule: ToleranceRule | None = None) -> Agreement:
    """Run the reference on a recorded case and compare with what was recorded.

    The C reference's run on the same input judges borderline decisions
    (the one excuse rule of ``parity.compare``). A recording of darknet's
    -Ofast build (``meta.build``) is judged with the -Ofast bound.
    """
    name = case.path or case.name
    if case.output is None or case.delta is None:
        return Agreement(name, skipped="the case holds no recorded output/delta")
    if ofast_nonfinite(case):
        return Agreement(name, skipped="-Ofast recording of NaN/Inf input (darknet's isnan checks compiled "
                                       "away); its -O2 twin is the reference")
    judge = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    res = judge if reference == "c" else run_reference(
        case.config, case.input, case.truth, flavor=case.flavor, backend=reference, darknet_lib=darknet_lib,
        darknet_include=darknet_include)
    recorded = case.recorded_run()
    assert recorded is not None
    rule = (rule or ToleranceRule()).for_build(build_of(case.meta.get("build")))
    return Agreement.of(compare(recorded, res, rule, case=case, decisions=judge, name=name))


def replay_paths(paths: Iterable[str | os.PathLike[str]], **kwargs: object) -> Iterator[Agreement]:
    for path in case_paths(paths):
        yield replay_case(load_case(path), **kwargs)  # type: ignore[arg-type]

"""The -Ofast bound: box deltas just inside it pass only against a reference known to be -Ofast.

darknet's default -Ofast build drifts from the source's semantics on DIoU/CIoU
box deltas (FORMAT.md of the recordings). The rule's one extension
(``ToleranceRule.for_build("ofast")``) reports such elements as -Ofast drift;
everything beyond the bound, any decision and any other term still fails,
and a reference not known to be -Ofast keeps the strict rule.
"""
from __future__ import annotations

import numpy as np
import pytest

from parity.case import save_case
from parity.cli import main
from parity.compare import compare
from parity.errors import ParityError
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.result import LayerRun
from parity.tolerance import OFAST_TERMS, build_of, load_tolerances

RULE = load_tolerances()          # the shipped file: its ofast section is what the docs state
INSIDE, BEYOND = 0.9, 1.1          # fractions of the -Ofast bound a perturbation takes


def _case():
    config = random_config(np.random.default_rng([11, 5]), "alexeyab")
    case = random_case(1105, config)
    res = run_reference(case.config, case.input, case.truth, decisions=True)
    case.output, case.delta, case.stats = res.output, res.delta, res.stats.as_dict()
    return case, res


def _perturbed(case, fraction: float, entry: int = 0) -> tuple[np.ndarray, int]:
    """The case's delta with every written ``entry`` moved by ``fraction`` of the -Ofast bound."""
    B, _, H, W = case.delta.shape
    delta = case.delta.copy().reshape(B, case.config.n, 5 + case.config.classes, H, W)
    part = delta[:, :, entry].astype(np.float64)
    written = part != 0
    bound = RULE.ofast.atol + RULE.ofast.rtol * np.abs(part)
    delta[:, :, entry] = np.where(written, part + fraction * bound, part).astype(np.float32)
    return delta.reshape(case.delta.shape), int(written.sum())


def _compare(case, judge, delta, build: str):
    cand = LayerRun(None, delta, None, backend="candidate")
    return compare(case.recorded_run(), cand, RULE.for_build(build), case=case, decisions=judge)


def test_shipped_bound_covers_the_measured_drift_and_exceeds_the_rule():
    # FORMAT.md: up to 1.8e-4 abs and 1.5e-3 rel; the bound covers each on its own.
    assert RULE.ofast.atol >= 1.8e-4 and RULE.ofast.rtol >= 1.5e-3
    assert RULE.ofast.atol > RULE.default.atol and RULE.ofast.rtol > RULE.default.rtol
    assert RULE.ofast_terms == OFAST_TERMS == ("x", "y", "w", "h")
    assert RULE.drift_for_term("x") is None                 # strict unless the reference is -Ofast
    ofast = RULE.for_build("ofast")
    assert ofast.drift_for_term("w") == RULE.ofast
    assert ofast.drift_for_term("obj") is None and ofast.drift_for_term("cls3") is None
    assert "-Ofast drift" in ofast.describe() and "-Ofast" not in RULE.describe()


def test_build_of_reads_the_recording_meta():
    assert build_of("gcc 12.2.0, x86_64, CPU-only library, -Ofast (darknet Makefile default flags)") == "ofast"
    assert build_of("gcc 12.2.0, x86_64, CPU-only library, -O2 -ffp-contract=off") == "o2"
    assert build_of(None) == "o2"
    with pytest.raises(ParityError, match="reference build 'fast'"):
        RULE.for_build("fast")


@pytest.mark.parametrize("entry", range(4), ids=lambda e: OFAST_TERMS[e])
def test_just_inside_passes_only_against_an_ofast_reference(entry):
    case, judge = _case()
    delta, written = _perturbed(case, INSIDE, entry)
    assert written > 0, "the case must write this box term"
    strict = _compare(case, judge, delta, "o2")
    assert not strict.passed and strict.value_mismatches == written and strict.ofast_drift == 0
    ofast = _compare(case, judge, delta, "ofast")
    assert ofast.passed, ofast.mismatches[:3]
    assert ofast.ofast_drift == written and ofast.value_mismatches == 0
    term = OFAST_TERMS[entry]
    assert sum(c.ofast_drift for c in ofast.cells if c.term == term) == written
    assert sum(c.ofast_drift for c in ofast.cells if c.term != term) == 0


def test_beyond_the_bound_fails_either_way():
    case, judge = _case()
    delta, written = _perturbed(case, BEYOND, 2)
    for build in ("o2", "ofast"):
        diff = _compare(case, judge, delta, build)
        assert not diff.passed and diff.value_mismatches == written and diff.ofast_drift == 0, build


def test_objectness_and_decisions_never_drift():
    case, judge = _case()
    delta, written = _perturbed(case, INSIDE, 4)             # objectness: not an -Ofast term
    assert written and not _compare(case, judge, delta, "ofast").passed
    delta = case.delta.copy()
    k = np.flatnonzero(delta.reshape(-1))[0]
    delta.reshape(-1)[k] = 0.0                                # a written delta not written: a decision
    diff = _compare(case, judge, delta, "ofast")
    assert not diff.passed and diff.decision_mismatches >= 1 and diff.ofast_drift == 0


def test_tolerance_file_ofast_section(tmp_path):
    good = tmp_path / "t.yaml"
    good.write_text("ofast: {atol: 1.0e-3, rtol: 0.01, terms: [x, y]}\n")
    rule = load_tolerances(good)
    assert rule.ofast.atol == 1e-3 and rule.ofast_terms == ("x", "y")
    assert rule.for_build("ofast").drift_for_term("w") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("ofast: {atol: 1.0e-3, terms: [x, bogus]}\n")
    with pytest.raises(ParityError, match="ofast.terms"):
        load_tolerances(bad)
    bad.write_text("ofast: {atol: -1}\n")
    with pytest.raises(ParityError, match="ofast"):
        load_tolerances(bad)


def _case_file(tmp_path, fraction: float, build: str | None) -> tuple[str, int]:
    """A case file whose recorded x deltas are moved by ``fraction`` of the bound; and how many moved."""
    case, _ = _case()
    case.delta, written = _perturbed(case, fraction, 0)
    if build is not None:
        case.meta["build"] = build
    path = tmp_path / f"case_{fraction}_{build is not None}.npz"
    save_case(path, case)
    return str(path), written


class TestCommandLine:
    def test_declared_ofast_reports_drift_and_exits_0(self, tmp_path, capsys):
        path, written = _case_file(tmp_path, INSIDE, None)
        assert main(["replay", path]) == 1
        capsys.readouterr()
        assert main(["replay", path, "--reference-build", "ofast"]) == 0
        out = " ".join(capsys.readouterr().out.split())      # the console wraps long lines
        assert f"{written} elements within -Ofast drift in 1 cases" in out
        assert "-Ofast reference: x,y,w,h within 0.0002 + 0.002*|ref|" in out

    def test_recording_meta_decides_unless_declared(self, tmp_path, capsys):
        path, _ = _case_file(tmp_path, INSIDE, "gcc, -Ofast (darknet Makefile default flags)")
        assert main(["replay", path]) == 0
        assert main(["replay", path, "--reference-build", "o2"]) == 1

    def test_beyond_the_bound_exits_1_even_when_declared(self, tmp_path, capsys):
        path, _ = _case_file(tmp_path, BEYOND, "gcc, -Ofast")
        assert main(["replay", path, "--reference-build", "ofast"]) == 1

    def test_unknown_build_exits_2(self, tmp_path, capsys):
        with pytest.raises(SystemExit) as exc:
            main(["replay", "x.npz", "--reference-build", "fast"])
        assert exc.value.code == 2

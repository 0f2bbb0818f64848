"""The pytest plugin: a user's one-line parity test passes on a correct port and fails with the evidence.

The user suites run in-process through ``pytester``. ``pytester`` drops the
modules an inner run imports for the first time, so everything the check
path imports (torch, the C reference, rich) is imported here first, and so is
Hypothesis, whose plugin would otherwise re-import it at every inner run's end.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

try:
    import hypothesis  # noqa: F401  (see the module docstring)
except ImportError:  # pragma: no cover - a test extra
    pass

import parity.candidates  # noqa: F401  (imported before the inner runs: see the module docstring)
import parity.diagnosis  # noqa: F401
import parity.facts  # noqa: F401
import parity.plugin
import parity.profiles  # noqa: F401
import parity.report  # noqa: F401
import parity.report.text  # noqa: F401
import parity.torch  # noqa: F401
import rich.console  # noqa: F401
from parity.config import YoloConfig
from parity.backends.c_reference import load_reference
from parity.suite import SuiteResult

pytest_plugins = ["pytester"]

# One [yolo] head on a 16x16 grid (stride 4 at 64x64): cases take milliseconds.
TINY_CFG = """\
[net]
width=64
height=64
channels=3
batch=1

[convolutional]
filters=16
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=21
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
ignore_thresh=.7
truth_thresh=1
max=20
"""

CANDIDATES = """\
import pytest
from parity.torch import yolo_forward


def correct(input, truth, config):
    return yolo_forward(input, truth, config).delta


def sign_flipped(input, truth, config):
    return -yolo_forward(input, truth, config).delta


def x_drifted(input, truth, config, fraction=0.9):
    # written x deltas moved by a fraction of the -Ofast bound (parity/tolerances.yaml: 2e-4 + 2e-3*|d|)
    delta = yolo_forward(input, truth, config).delta.clone()
    b, _, h, w = delta.shape
    x = delta.view(b, config.n, 5 + config.classes, h, w)[:, :, 0]
    x += (x != 0) * fraction * (2e-4 + 2e-3 * x.abs())
    return delta


def gpu_port(input, truth, config):
    return yolo_forward(input, truth, config, backward="gpu").delta


def x_doubled(input, truth, config):
    delta = yolo_forward(input, truth, config).delta.clone()
    b, _, h, w = delta.shape
    delta.view(b, config.n, 5 + config.classes, h, w)[:, :, 0] *= 2
    return delta
"""


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    load_reference()   # the C reference compiled and loaded before any inner run


@pytest.fixture
def user(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: the tiny cfg beside the test files."""
    pytester.makefile(".cfg", tiny=TINY_CFG)
    return pytester


def _user_test(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(test_user=CANDIDATES + "\n\n" + body)


# --- registration and import cost ----------------------------------------------------------------------

def test_entry_point_is_registered() -> None:
    points = [e for e in entry_points(group="pytest11") if e.name == "darknet_parity"]
    assert [e.value for e in points] == ["parity.plugin"]


def test_help_lists_the_options_and_ini_names(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    assert "darknet-parity" in out
    for name in ("--darknet-parity-cases", "--darknet-parity-seed", "--darknet-parity-report",
                 "darknet_parity_cases", "darknet_parity_seed", "darknet_parity_report"):
        assert name in out


def test_marker_is_declared(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["*@pytest.mark.darknet_parity(cases=N, seed=S)*"])


def test_importing_the_plugin_imports_neither_torch_numpy_nor_cffi() -> None:
    code = ("import sys, parity.plugin\n"
            "heavy = sorted({'torch', 'numpy', 'cffi'} & set(sys.modules))\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- a user's suite ------------------------------------------------------------------------------------

def test_correct_candidate_passes_and_the_summary_rolls_it_up(user: pytest.Pytester) -> None:
    _user_test(user, """
def test_my_loss(darknet_parity):
    result = darknet_parity.check(correct, cfg="tiny.cfg", cases=3)
    assert result.passed or not result.failed
    assert [c.case for c in result.cases] == ["tiny.cfg#0/head0", "tiny.cfg#1/head0", "tiny.cfg#2/head0"]
    assert result.options["convention"] is None   # detected, not declared
    assert {c.meta["convention"] for c in result.cases} == {"delta"}
""")
    result = user.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= darknet-parity =*",
                                 "test_user.py::test_my_loss: correct vs cfg tiny.cfg (alexeyab): 3 cases, "
                                 "3 passed, 0 failed; worst term *"])


def test_sign_flipped_candidate_fails_with_table_cases_and_diagnosis(user: pytest.Pytester) -> None:
    _user_test(user, """
def test_my_loss(darknet_parity):
    darknet_parity.check(sign_flipped, cfg="tiny.cfg", cases=2, convention="delta")
""")
    result = user.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "darknet-parity: sign_flipped vs cfg tiny.cfg (alexeyab): 2 cases, 0 passed, 2 failed" in out
    assert "Term x role rows that differ, all cases" in out     # the per term x role table
    for column in ("term", "role", "decision", "value", "max abs"):
        assert column in out
    assert "tiny.cfg#0/head0" in out and "tiny.cfg#1/head0" in out   # the case ids
    assert "first mismatches" in out and "reference " in out and "darknet: " in out
    assert "with this 1 change:" in out and "sign_flipped" in out    # the explanation search names it
    assert "MISMATCH: 2 of 2 cases failed" in out
    # the report section attached to the failing test, and the roll-up
    result.stdout.fnmatch_lines(["*- darknet-parity -*", "sign_flipped vs cfg tiny.cfg*2 failed*"])
    result.stdout.fnmatch_lines(["*= darknet-parity =*", "test_user.py::test_my_loss: sign_flipped vs *"])
    # pytrace=False: the failure is the report, not a traceback through the plugin
    assert "parity/plugin.py" not in out


def test_undeclared_sign_flip_is_read_as_a_gradient(user: pytest.Pytester) -> None:
    """Without a declared convention a negated delta is a perfect gradient port."""
    _user_test(user, """
def test_my_loss(darknet_parity):
    result = darknet_parity.check(sign_flipped, cfg="tiny.cfg", cases=2)
    assert {c.meta["convention"] for c in result.cases} == {"grad"}
""")
    user.runpytest().assert_outcomes(passed=1)


def test_doubled_x_fails_naming_the_term_and_the_factor(user: pytest.Pytester) -> None:
    _user_test(user, """
def test_my_loss(darknet_parity):
    darknet_parity.check(x_doubled, cfg="tiny.cfg", cases=3)
""")
    result = user.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "worst term x (" in out
    assert "x: off by a constant factor 2" in out
    assert "tiny.cfg#1/head0" in out


def test_reference_build_ofast_reports_drift_and_only_drift(user: pytest.Pytester) -> None:
    _user_test(user, """
def test_strict(darknet_parity):
    darknet_parity.check(x_drifted, cfg="tiny.cfg", cases=3)

def test_ofast(darknet_parity):
    result = darknet_parity.check(x_drifted, cfg="tiny.cfg", cases=3, reference_build="ofast")
    assert sum(c.ofast_drift for c in result.cases) > 0

def test_ofast_beyond(darknet_parity):
    darknet_parity.check(lambda i, t, c: x_drifted(i, t, c, 1.1), cfg="tiny.cfg", cases=3, reference_build="ofast")

def test_bad_build(darknet_parity):
    darknet_parity.check(x_drifted, cfg="tiny.cfg", cases=1, reference_build="fast")
""")
    result = user.runpytest("-rA")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.re_match_lines([r"PASSED test_user.py::test_ofast$"], consecutive=False)
    result.stdout.re_match_lines([r"FAILED test_user.py::test_strict\b"], consecutive=False)
    result.stdout.re_match_lines([r"FAILED test_user.py::test_ofast_beyond\b"], consecutive=False)
    assert "reference_build='fast'" in result.stdout.str()


def test_backward_gpu_compares_with_darknets_gpu_delta(user: pytest.Pytester) -> None:
    user.makefile(".cfg", halved=TINY_CFG + "delta_normalizer=0.5\n")
    _user_test(user, """
def test_gpu(darknet_parity):
    darknet_parity.check(gpu_port, cfg="halved.cfg", cases=2, backward="gpu", convention="delta")

def test_cpu_candidate_vs_gpu(darknet_parity):
    darknet_parity.check(correct, cfg="halved.cfg", cases=2, backward="gpu", convention="delta")

def test_gpu_candidate_vs_cpu(darknet_parity):
    darknet_parity.check(gpu_port, cfg="halved.cfg", cases=2, convention="delta")
""")
    result = user.runpytest("-rA")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.re_match_lines([r"PASSED test_user.py::test_gpu$"], consecutive=False)


def test_spec_string_and_profile(user: pytest.Pytester) -> None:
    _user_test(user, """
def test_builtin(darknet_parity):
    result = darknet_parity.check("parity", profile="yolov3-tiny", cases=2)
    assert len(result.cases) == 2 * 2                 # two samples, one case per head
    assert all(c.case.startswith("yolov3-tiny#") for c in result.cases)

def test_module_spec(darknet_parity):
    darknet_parity.check("test_user:correct", cfg="tiny.cfg", cases=2)
""")
    user.runpytest().assert_outcomes(passed=2)


def test_cfg_is_also_found_beside_the_test_file(pytester: pytest.Pytester) -> None:
    sub = pytester.mkdir("sub")
    (sub / "tiny.cfg").write_text(TINY_CFG)
    (sub / "test_user.py").write_text(CANDIDATES + """
def test_my_loss(darknet_parity):
    darknet_parity.check(correct, cfg="tiny.cfg", cases=1)
""")
    pytester.runpytest("sub").assert_outcomes(passed=1)


def test_plain_report_without_rich_shows_the_same_facts(user: pytest.Pytester) -> None:
    _user_test(user, """
import pytest
from parity.plugin import _plain_report

def test_plain(darknet_parity):
    with pytest.raises(pytest.fail.Exception):
        darknet_parity.check(sign_flipped, cfg="tiny.cfg", cases=2, convention="delta")
    text = _plain_report(darknet_parity.results[-1])
    assert "Term x role, all cases" in text and "max ulps" in text
    assert "FAILED tiny.cfg#0/head0" in text
    assert "the sign is flipped" in text and "cause sign" in text
    assert text.endswith("MISMATCH: 2 of 2 cases failed")
""")
    user.runpytest().assert_outcomes(passed=1)


def test_ini_option_marker_and_argument_set_the_case_count(user: pytest.Pytester) -> None:
    user.makeini("[pytest]\ndarknet_parity_cases = 3\ndarknet_parity_seed = 5\n")
    _user_test(user, """
import pytest

def test_default(darknet_parity):
    result = darknet_parity.check(correct, cfg="tiny.cfg")
    assert (darknet_parity.cases, darknet_parity.seed) == (EXPECTED_CASES, EXPECTED_SEED)
    assert len(result.cases) == EXPECTED_CASES and result.options["seed"] == EXPECTED_SEED

@pytest.mark.darknet_parity(cases=4, seed=9)
def test_marker(darknet_parity):
    result = darknet_parity.check(correct, cfg="tiny.cfg")
    assert len(result.cases) == 4 and result.options["seed"] == 9

@pytest.mark.darknet_parity(cases=4)
def test_argument_wins(darknet_parity):
    result = darknet_parity.check(correct, cfg="tiny.cfg", cases=1, seed=2)
    assert len(result.cases) == 1 and result.options["seed"] == 2
""".replace("EXPECTED_CASES", "int(__import__('os').environ['EXPECTED_CASES'])")
   .replace("EXPECTED_SEED", "int(__import__('os').environ['EXPECTED_SEED'])"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPECTED_CASES", "3")
        mp.setenv("EXPECTED_SEED", "5")
        ini = user.runpytest()
        ini.assert_outcomes(passed=3)
        ini.stdout.fnmatch_lines(["*test_default: correct vs cfg tiny.cfg (alexeyab): 3 cases*",
                                  "*test_marker: correct vs cfg tiny.cfg (alexeyab): 4 cases*",
                                  "*test_argument_wins: correct vs cfg tiny.cfg (alexeyab): 1 cases*"])
        mp.setenv("EXPECTED_CASES", "2")
        mp.setenv("EXPECTED_SEED", "1")
        cli = user.runpytest("--darknet-parity-cases", "2", "--darknet-parity-seed", "1")
        cli.assert_outcomes(passed=3)
        cli.stdout.fnmatch_lines(["*test_default: correct vs cfg tiny.cfg (alexeyab): 2 cases*"])


def test_seed_changes_the_cases(user: pytest.Pytester) -> None:
    _user_test(user, """
def test_seeds(darknet_parity):
    a = darknet_parity.check(correct, cfg="tiny.cfg", cases=2, seed=0)
    b = darknet_parity.check(correct, cfg="tiny.cfg", cases=2, seed=0)
    c = darknet_parity.check(correct, cfg="tiny.cfg", cases=2, seed=1)
    shapes = lambda r: [(c.shape, c.cells[0].elements, c.branches) for c in r.cases]
    assert shapes(a) == shapes(b)
    assert shapes(a) != shapes(c)
""")
    user.runpytest().assert_outcomes(passed=1)


def test_report_folder_gets_json_html_and_a_junit_property(user: pytest.Pytester) -> None:
    _user_test(user, """
def test_ok(darknet_parity):
    darknet_parity.check(correct, cfg="tiny.cfg", cases=2)

def test_bad(darknet_parity):
    darknet_parity.check(x_doubled, cfg="tiny.cfg", cases=3)
""")
    result = user.runpytest("--darknet-parity-report", "out", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    out_dir = user.path / "out"
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["test_user.py_test_bad.html", "test_user.py_test_bad.json",
                     "test_user.py_test_ok.html", "test_user.py_test_ok.json"]
    bad = SuiteResult.load(out_dir / "test_user.py_test_bad.json")
    assert bad.failed and bad.options["source"] == "cfg tiny.cfg (alexeyab)"
    assert json.loads((out_dir / "test_user.py_test_ok.json").read_text())["passed"] is True
    assert "<html" in (out_dir / "test_user.py_test_bad.html").read_text()
    result.stdout.fnmatch_lines([f"report: {out_dir / 'test_user.py_test_bad.json'}*"])
    junit = (user.path / "junit.xml").read_text()
    assert 'name="darknet_parity" value="x_doubled vs cfg tiny.cfg (alexeyab): 3 cases' in junit


# --- misuse --------------------------------------------------------------------------------------------

def test_marker_misuse_errors_the_test(user: pytest.Pytester) -> None:
    _user_test(user, """
import pytest

@pytest.mark.darknet_parity(case=3)
def test_typo(darknet_parity):
    pass

@pytest.mark.darknet_parity(cases=0)
def test_zero(darknet_parity):
    pass
""")
    result = user.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*unknown argument(s) case; known: cases, seed*"])
    result.stdout.fnmatch_lines(["*darknet_parity(cases=...): 0 must be >= 1*"])


def test_bad_ini_value_is_a_usage_error(user: pytest.Pytester) -> None:
    user.makeini("[pytest]\ndarknet_parity_cases = many\n")
    result = user.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option darknet_parity_cases: 'many' is not an integer*"])


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of cfg=, profile= or config= (got none)"),
    ({"cfg": "a.cfg", "profile": "yolov4"}, "exactly one of cfg=, profile= or config= (got cfg, profile)"),
    ({"profile": "yolov99"}, "profile='yolov99'): unknown profile; known: yolov4"),
    ({"profile": "yolov4", "convention": "gradient"}, "convention='gradient'): expected one of delta, grad, loss"),
    ({"profile": "yolov4", "layout": "nhwc"}, "layout='nhwc'): expected one of nchw, bnhwc"),
    ({"profile": "yolov4", "flavor": "pjreddie"}, "the profile's cases are alexeyab cases"),
    ({"profile": "yolov4", "cases": 0}, "cases=...): 0 must be >= 1"),
    ({"cfg": "no-such.cfg"}, "cfg='no-such.cfg'): no such file"),
    ({"config": "yolov4.cfg"}, "expected a parity.config.YoloConfig, got str"),
])
def test_misuse_is_a_usage_error(darknet_parity, kwargs, message) -> None:
    with pytest.raises(pytest.UsageError) as info:
        darknet_parity.check(parity.torch.yolo_forward, **kwargs)
    assert message in str(info.value)


def test_an_unloadable_spec_is_a_parity_error(darknet_parity) -> None:
    from parity.errors import ParityError

    with pytest.raises(ParityError, match="candidate module 'no_such_module' not found"):
        darknet_parity.check("no_such_module:loss", profile="yolov4")


def test_a_bare_config_gets_generated_cases(darknet_parity) -> None:
    config = YoloConfig(classes=3, num=6, mask=(0, 1, 2), anchors=(10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319),
                        max_boxes=20, net_w=128, net_h=128)
    result = darknet_parity.check("parity", config=config, cases=3, seed=4)
    assert [c.case for c in result.cases] == ["config#0", "config#1", "config#2"]
    assert not result.failed
    again = darknet_parity.check("parity", config=config, cases=3, seed=4)
    assert [c.shape for c in again.cases] == [c.shape for c in result.cases]


def test_the_plugin_module_is_what_pytest_loaded(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.get_plugin("darknet_parity") is parity.plugin

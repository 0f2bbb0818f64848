"""pytest plugin: check a port of darknet's [yolo] loss from a user's own test suite.

Registered through the ``pytest11`` entry point (``darknet_parity =
"parity.plugin"``), so installing darknet-parity is enough::

    def test_my_loss_matches_darknet(darknet_parity):
        darknet_parity.check(my_loss, cfg="yolov4.cfg")      # or profile="yolov4", or config=YoloConfig(...)

``check`` generates cases (one per [yolo] layer of the cfg at its true grid,
per sample), runs the candidate and the C reference on each in-process and
compares them term by term. A failing case fails the test with the text
report (term x role table, first mismatches with darknet's reasoning, the
diagnosis); a passing run returns the ``SuiteResult``.

Import-light on purpose: pytest loads this module in every session of every
project that has darknet-parity installed, so it imports neither torch,
numpy nor cffi. Everything heavy is imported inside ``DarknetParity.check``.

Options (group "darknet-parity"; ini names in brackets)::

    --darknet-parity-cases N    samples per check, default 20       [darknet_parity_cases]
    --darknet-parity-seed S     seed of the generated cases, default 0 [darknet_parity_seed]
    --darknet-parity-report DIR write a JSON and an HTML report per check [darknet_parity_report]

The marker ``@pytest.mark.darknet_parity(cases=N, seed=S)`` overrides them
per test; keyword arguments of ``check`` override the marker.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:  # annotations only: importing these at load time would pull in numpy and torch
    from .config import YoloConfig
    from .diff import CaseDiff
    from .suite import SuiteResult

GROUP = "darknet-parity"
OPT_CASES = "--darknet-parity-cases"
OPT_SEED = "--darknet-parity-seed"
OPT_REPORT = "--darknet-parity-report"
OPT_COVERAGE = "--darknet-parity-require-coverage"
OPT_FINITE = "--darknet-parity-finite-only"
INI_CASES = "darknet_parity_cases"
INI_SEED = "darknet_parity_seed"
INI_REPORT = "darknet_parity_report"
MARKER = "darknet_parity"
MARKER_KWARGS = ("cases", "seed")
SECTION = "darknet-parity"          # report section and terminal-summary heading
PROPERTY = "darknet_parity"         # JUnit property (record_property style)
DEFAULT_CASES = 20
DEFAULT_SEED = 0
REPORT_WIDTH = 120                  # the failure message is rendered at a fixed width
REPORT_MAX_CASES = 5                # failing cases shown in detail in the failure message (-vv: all)
_CONVENTIONS = ("delta", "grad", "loss")   # parity.candidates.CONVENTIONS, without importing torch
_LAYOUTS = ("nchw", "bnhwc")               # parity.candidates.LAYOUTS
_FLAVORS = ("alexeyab", "pjreddie")        # parity.config.FLAVORS
_BUILDS = ("auto", "o2", "ofast")          # parity.suite.REFERENCE_BUILDS
_BACKWARDS = ("cpu", "gpu")                # parity.config.BACKWARDS

SESSION_KEY = pytest.StashKey["ParitySession"]()


# --- options, marker, session ----------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "darknet-parity: check a port of darknet's [yolo] loss against darknet")
    group.addoption(OPT_CASES, action="store", type=int, default=None, metavar="N",
                    help=f"samples per darknet_parity.check() (each gives one case per [yolo] layer); "
                         f"default: ini {INI_CASES} or {DEFAULT_CASES}")
    group.addoption(OPT_SEED, action="store", type=int, default=None, metavar="S",
                    help=f"seed of the generated cases; default: ini {INI_SEED} or {DEFAULT_SEED}")
    group.addoption(OPT_REPORT, action="store", default=None, metavar="DIR",
                    help=f"write a JSON and an HTML report per check into DIR; default: ini {INI_REPORT}")
    group.addoption(OPT_FINITE, action="store_true", default=None,
                    help="leave out cases whose input holds NaN/Inf (same as `darknet-parity run --finite-only`)")
    group.addoption(OPT_COVERAGE, action="store_true", default=None,
                    help="fail a check when a darknet branch its configs enable is never reached (always "
                         "reported); same policy as `darknet-parity run --require-coverage`")
    parser.addini(INI_CASES, f"darknet-parity: samples per check (default {DEFAULT_CASES})",
                  default=str(DEFAULT_CASES))
    parser.addini(INI_SEED, f"darknet-parity: seed of the generated cases (default {DEFAULT_SEED})",
                  default=str(DEFAULT_SEED))
    parser.addini(INI_REPORT, "darknet-parity: folder for the JSON and HTML reports (default: none)", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(cases=N, seed=S): samples and seed of darknet_parity.check() in this test "
                   "(overriding --darknet-parity-cases/--darknet-parity-seed)")
    session = ParitySession.from_config(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "darknet-parity-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        config.pluginmanager.unregister(session)
        del config.stash[SESSION_KEY]


def _count(value: Any, what: str, low: int) -> int:
    """``value`` as an int >= ``low``; anything else is a UsageError naming ``what``."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise pytest.UsageError(f"{what}: {value!r} is not an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise pytest.UsageError(f"{what}: {value!r} is not an integer")
    if value < low:
        raise pytest.UsageError(f"{what}: {value} must be >= {low}")
    return value


@dataclass
class Record:
    """One ``check`` call, in plain values: what the report section and the roll-up print."""

    nodeid: str
    label: str            # "candidate vs source"
    cases: int
    passed: int
    failed: int
    errors: int
    worst: str            # "x (1566 mismatches)" or "obj (max abs 2.4e-07)"
    missing: int          # enabled branches never hit (profiles)
    seconds: float
    reports: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors

    def line(self) -> str:
        text = (f"{self.label}: {self.cases} cases, {self.passed} passed, {self.failed} failed"
                + (f", {self.errors} could not be compared" if self.errors else "")
                + f"; worst term {self.worst}")
        if self.missing:
            text += f"; {self.missing} enabled branches never hit"
        return text + f"; {self.seconds:.2f} s"


class ParitySession:
    """The plugin's one state object: settings in force and every check's record, per test.

    Registered with the plugin manager, so its hook methods run as plugin hooks.
    """

    def __init__(self, config: pytest.Config, cases: int, seed: int, report_dir: Path | None,
                 require_coverage: bool = False, finite_only: bool = False) -> None:
        self.config = config
        self.require_coverage = require_coverage
        self.finite_only = finite_only
        self.cases = cases
        self.seed = seed
        self.report_dir = report_dir
        self.records: dict[str, list[Record]] = {}

    @classmethod
    def from_config(cls, config: pytest.Config) -> "ParitySession":
        cases, seed = config.getoption(OPT_CASES), config.getoption(OPT_SEED)
        cases = (_count(config.getini(INI_CASES), f"ini option {INI_CASES}", 1) if cases is None
                 else _count(cases, OPT_CASES, 1))
        seed = (_count(config.getini(INI_SEED), f"ini option {INI_SEED}", 0) if seed is None
                else _count(seed, OPT_SEED, 0))
        report = config.getoption(OPT_REPORT) or str(config.getini(INI_REPORT) or "").strip() or None
        report_dir = None
        if report:
            report_dir = Path(report).expanduser()
            if not report_dir.is_absolute():
                report_dir = Path(config.invocation_params.dir) / report_dir
        return cls(config, cases, seed, report_dir, bool(config.getoption(OPT_COVERAGE)),
                   bool(config.getoption(OPT_FINITE)))

    # settings per test: session options, then the marker (closest last wins)
    def settings(self, item: pytest.Item) -> dict[str, int]:
        out = {"cases": self.cases, "seed": self.seed}
        markers = list(item.iter_markers(MARKER))
        for marker in reversed(markers):          # farthest (module/class) first, the test's own last
            out.update(marker_kwargs(marker))
        return out

    def record(self, record: Record) -> None:
        self.records.setdefault(record.nodeid, []).append(record)

    def report_paths(self, nodeid: str) -> tuple[Path, Path] | None:
        """Where this test's next check writes its JSON and HTML reports (None: no report folder)."""
        if self.report_dir is None:
            return None
        stem = re.sub(r"[^\w.\-]+", "_", nodeid).strip("_") or "test"
        done = len(self.records.get(nodeid, []))
        if done:
            stem += f"-{done + 1}"
        return self.report_dir / f"{stem}.json", self.report_dir / f"{stem}.html"

    # --- hooks ---
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Misused markers fail the test's setup before any fixture runs."""
        for marker in item.iter_markers(MARKER):
            marker_kwargs(marker)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        outcome = yield
        report = outcome.get_result()
        records = self.records.get(item.nodeid)
        if report.when == "call" and report.failed and records:
            lines = [r.line() for r in records]
            lines += [f"report: {path}" for r in records for path in r.reports]
            report.sections.append((SECTION, "\n".join(lines)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        terminalreporter.section(SECTION)
        for nodeid, records in self.records.items():
            for r in records:
                markup = {"green": True} if r.ok else {"red": True}
                terminalreporter.write_line(f"{nodeid}: {r.line()}", **markup)
        if self.report_dir is not None:
            terminalreporter.write_line(f"reports (JSON, HTML): {self.report_dir}")


def marker_kwargs(marker: pytest.Mark) -> dict[str, int]:
    """The marker's keyword arguments, checked: only cases >= 1 and seed >= 0."""
    if marker.args:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments only "
                                f"({', '.join(MARKER_KWARGS)}), got positional {marker.args!r}")
    unknown = sorted(set(marker.kwargs) - set(MARKER_KWARGS))
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: unknown argument(s) {', '.join(unknown)}; "
                                f"known: {', '.join(MARKER_KWARGS)}")
    out = {}
    if "cases" in marker.kwargs:
        out["cases"] = _count(marker.kwargs["cases"], f"@pytest.mark.{MARKER}(cases=...)", 1)
    if "seed" in marker.kwargs:
        out["seed"] = _count(marker.kwargs["seed"], f"@pytest.mark.{MARKER}(seed=...)", 0)
    return out


# --- the fixture -----------------------------------------------------------------------------------

@pytest.fixture
def darknet_parity(request: pytest.FixtureRequest):
    """Checks a [yolo] loss port against darknet: ``darknet_parity.check(fn, cfg=...)``."""
    session = request.config.stash[SESSION_KEY]
    checker = DarknetParity(session, request.node, **session.settings(request.node))
    yield checker
    checker.results.clear()


class DarknetParity:
    """Per-test checker; ``cases`` and ``seed`` are the settings in force for this test."""

    def __init__(self, session: ParitySession, item: pytest.Item, cases: int, seed: int) -> None:
        self._session = session
        self._item = item
        self.cases = cases
        self.seed = seed
        self.results: list["SuiteResult"] = []

    def check(self, fn: Callable[..., Any] | str, *, cfg: str | os.PathLike[str] | None = None,
              profile: str | None = None, config: "YoloConfig | None" = None, cases: int | None = None,
              seed: int | None = None, convention: str | None = None, layout: str = "nchw",
              flavor: str | None = None, device: str = "cpu", tolerances: Any = None,
              finite_only: bool = False, framework: str | None = None, network: bool = False,
              reference_build: str = "auto", backward: str = "cpu", loss_scale: float = 1.0,
              search: bool = True) -> "SuiteResult":
        """Compare ``fn`` with darknet's [yolo] layer; fail the test on any failing case.

        ``fn(input, truth, config)`` returns darknet's delta, a gradient or a
        scalar loss (``convention`` "delta" | "grad" | "loss"; None detects
        it); it may also be a spec string ``"module:callable"``,
        ``"path/file.py:callable"``, ``"parity"`` or ``"naive"``. Exactly one
        of ``cfg`` (a darknet cfg: every [yolo] layer at its true grid),
        ``profile`` (a name from ``parity/profiles.yaml``) or ``config`` (one
        ``YoloConfig``, random grids) names the cases; ``cases`` samples are
        generated from ``seed``. ``tolerances`` is a tolerance YAML file or a
        ``parity.tolerance.ToleranceRule``. ``finite_only`` (or the option
        --darknet-parity-finite-only) leaves out cases whose input holds
        NaN/Inf. ``framework`` ("torch", "jax", "tf"; None detects it from
        the callable's module) says which arrays ``fn`` takes. ``network=True``:
        ``fn(inputs, truth, configs)`` takes every head of a sample at once
        (lists), returning a scalar loss or one delta/gradient per head.
        ``search`` (default on): a failing check's message leads with the
        catalogue deviations under which darknet reproduces ``fn`` (the
        explanation search), each with its fix.
        ``reference_build="ofast"`` holds ``fn`` to darknet's default
        -Ofast build: box deltas within the -Ofast bound of the tolerance file
        are reported as -Ofast drift, not failures ("o2" and the default
        "auto" keep the strict rule: the C reference is the source's
        semantics). ``backward="gpu"`` holds ``fn`` to darknet's GPU backward
        (the reference's delta times ``loss_scale * delta_normalizer``,
        AlexeyAB); the default "cpu" is darknet's CPU backward. Returns the
        ``SuiteResult``.
        """
        given = [name for name, value in (("cfg", cfg), ("profile", profile), ("config", config))
                 if value is not None]
        if len(given) != 1:
            raise pytest.UsageError("darknet_parity.check() needs exactly one of cfg=, profile= or config= "
                                    + (f"(got {', '.join(given)})" if given else "(got none)"))
        count = self.cases if cases is None else _count(cases, "darknet_parity.check(cases=...)", 1)
        seed = self.seed if seed is None else _count(seed, "darknet_parity.check(seed=...)", 0)
        _choice("convention", convention, _CONVENTIONS, allow_none=True)
        _choice("layout", layout, _LAYOUTS, allow_none=False)
        _choice("flavor", flavor, _FLAVORS, allow_none=True)
        _choice("reference_build", reference_build, _BUILDS, allow_none=False)
        _choice("backward", backward, _BACKWARDS, allow_none=False)

        from .suite import RunOptions, run_suite
        from .tolerance import ToleranceRule, load_tolerances

        candidate = _candidate(fn, convention, layout, device, framework, network)
        if isinstance(tolerances, ToleranceRule):
            rule, tol_path = tolerances, None
        elif tolerances is None or isinstance(tolerances, (str, os.PathLike)):
            tol_path = None if tolerances is None else os.fspath(tolerances)
            rule = load_tolerances(tol_path)
        else:
            raise pytest.UsageError(f"darknet_parity.check(tolerances=...): expected a YAML file path or a "
                                    f"parity.tolerance.ToleranceRule, got {type(tolerances).__name__}")
        if cfg is not None:
            source, sweep = self._cfg_sweep(cfg, count, seed, flavor)
        elif profile is not None:
            source, sweep = _profile_sweep(profile, count, seed, flavor)
        else:
            source, sweep = _config_sweep(config, count, seed, flavor)

        opts = RunOptions(candidate=candidate.name, convention=candidate.convention, layout=layout, device=device,
                          tolerances=tol_path, require_coverage=self._session.require_coverage,
                          finite_only=finite_only or self._session.finite_only, network=network,
                          reference_build=reference_build, backward=backward, loss_scale=float(loss_scale),
                          search=bool(search))
        result = run_suite(sweep, opts, candidate=candidate, rule=rule,
                           options={"source": source, "cases": count, "seed": seed})
        self.results.append(result)
        self._finish(result, f"{_short(candidate.name)} vs {source}")
        return result

    # --- internals ---
    def _cfg_sweep(self, cfg: str | os.PathLike[str], count: int, seed: int, flavor: str | None):
        from .cases import CaseRef
        from .profiles import cfg_cases

        path = _find_cfg(cfg, self._item)
        flavor = flavor or "alexeyab"

        def sweep():
            for k, case in enumerate(cfg_cases(path, count, seed, flavor=flavor)):
                yield CaseRef("cfg", str(path), k, seed, count), case
        return f"cfg {path.name} ({flavor})", sweep()

    def _finish(self, result: "SuiteResult", label: str) -> None:
        session = self._session
        failing = result.failed
        errors = sum(1 for c in failing if c.error is not None)
        record = Record(self._item.nodeid, label, len(result.cases), len(result.cases) - len(failing),
                        len(failing) - errors, errors, _worst_term(result.cases),
                        sum(len(v) for v in result.missing_branches.values()), result.seconds)
        paths = session.report_paths(self._item.nodeid)
        if paths is not None:
            record.reports = _write_reports(result, *paths)
        session.record(record)
        self._item.user_properties.append((PROPERTY, record.line()))
        if not result.passed:
            verbose = self._item.config.getoption("verbose") > 1
            header = f"darknet-parity: {record.line()}"
            if record.reports:
                header += "\nreports: " + ", ".join(record.reports)
            pytest.fail(header + "\n\n" + render_report(result, verbose=verbose), pytrace=False)


def _choice(what: str, value: Any, choices: tuple[str, ...], allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        extra = " or None (detect)" if what == "convention" else (" or None" if allow_none else "")
        raise pytest.UsageError(f"darknet_parity.check({what}={value!r}): expected one of "
                                f"{', '.join(choices)}{extra}")


def _candidate(fn: Any, convention: str | None, layout: str, device: str, framework: str | None = None,
               network: bool = False) -> Any:
    """A ``parity.candidates.Candidate`` from a callable or a spec string."""
    from .candidates import Candidate, load_candidate

    if isinstance(fn, str):
        return load_candidate(fn, convention=convention, layout=layout, device=device, framework=framework,
                              network=network)
    if not callable(fn):
        raise pytest.UsageError(f"darknet_parity.check(fn): {type(fn).__name__} is neither a callable "
                                "fn(input, truth, config) nor a spec string 'module:callable'")
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return Candidate(f"{module}:{name}", fn, convention, layout, device, framework, network)


def _short(name: str) -> str:
    """A candidate's name for one-line summaries (the callable, not the module path)."""
    return name.rpartition(":")[2] or name


def _find_cfg(cfg: str | os.PathLike[str], item: pytest.Item) -> Path:
    """The cfg as given (absolute or from the current directory), else beside the test file."""
    path = Path(cfg).expanduser()
    tried = [path if path.is_absolute() else Path.cwd() / path]
    if path.is_file():
        return path.resolve()
    if not path.is_absolute():
        beside = Path(item.path).parent / path
        tried.append(beside)
        if beside.is_file():
            return beside.resolve()
    raise pytest.UsageError(f"darknet_parity.check(cfg={os.fspath(cfg)!r}): no such file (looked for "
                            + " and ".join(str(t) for t in tried) + ")")


def _profile_sweep(name: str, count: int, seed: int, flavor: str | None):
    from .cases import suite_refs
    from .profiles import load_profiles

    if not isinstance(name, str):
        raise pytest.UsageError(f"darknet_parity.check(profile=...): expected a profile name, got "
                                f"{type(name).__name__}")
    profiles = load_profiles()
    if name not in profiles:
        raise pytest.UsageError(f"darknet_parity.check(profile={name!r}): unknown profile; known: "
                                f"{', '.join(profiles)}")
    prof = profiles[name]
    if flavor is not None and flavor != prof.flavor:
        raise pytest.UsageError(f"darknet_parity.check(profile={name!r}, flavor={flavor!r}): the profile's "
                                f"cases are {prof.flavor} cases; leave flavor out or pick a {flavor} profile")

    return f"profile {name}", suite_refs([name], [], [], count, seed)


def _config_sweep(config: Any, count: int, seed: int, flavor: str | None):
    """``count`` single-head cases for one config on random small grids; the first force rare features."""
    from .cases import CaseRef
    from .config import YoloConfig
    from .generate import CaseFeatures, forced_features, random_case

    if not isinstance(config, YoloConfig):
        raise pytest.UsageError(f"darknet_parity.check(config=...): expected a parity.config.YoloConfig, got "
                                f"{type(config).__name__} (for a cfg file use cfg=...)")
    flavor = flavor or config.flavor
    features = CaseFeatures()
    forced = forced_features(features, [config], flavor)

    def sweep():
        import numpy as np

        for k in range(count):
            case_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
            force = forced[k] if k < len(forced) else None
            case = random_case(case_seed, config, flavor=flavor,
                               features=features.forcing(force) if force else features)
            case.meta.update({"profile": "config", "sample": k, "profile_seed": seed, "forced": force,
                              "case_id": f"config#{k}"})
            yield CaseRef("config", "config", k, seed, count), case
    return f"config ({flavor})", sweep()


def _worst_term(cases: list["CaseDiff"]) -> str:
    """The term with the most failing mismatches; when none fail, the one with the largest error."""
    fails: dict[str, int] = {}
    worst_abs: dict[str, float] = {}
    for case in cases:
        for cell in case.cells:
            fails[cell.term] = fails.get(cell.term, 0) + cell.decision_mismatches + cell.value_mismatches
            worst_abs[cell.term] = max(worst_abs.get(cell.term, 0.0), cell.max_abs)
    if any(fails.values()):
        term = max(fails, key=lambda t: (fails[t], worst_abs[t]))
        return f"{term} ({fails[term]} mismatches, max abs {worst_abs[term]:.3g})"
    if worst_abs and max(worst_abs.values()) > 0:
        term = max(worst_abs, key=lambda t: worst_abs[t])
        return f"{term} (max abs {worst_abs[term]:.3g})"
    return "none (max abs 0)" if worst_abs else "none (nothing compared)"


def _write_reports(result: "SuiteResult", json_path: Path, html_path: Path) -> list[str]:
    """JSON and HTML reports where parity.report provides the writers (else JSON through SuiteResult)."""
    try:
        from .report import write_html, write_json
    except ImportError:
        result.save(json_path)
        return [str(json_path)]
    return [str(write_json(result, json_path)), str(write_html(result, html_path))]


def render_report(result: "SuiteResult", *, verbose: bool = False, width: int = REPORT_WIDTH) -> str:
    """The text report of ``result`` (parity.report's rich view; a plain one where rich is missing)."""
    try:
        from rich.console import Console

        from .report import render_text
    except ImportError:
        return _plain_report(result, verbose=verbose)
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False, no_color=True,
                      highlight=False, emoji=False)
    render_text(result, console=console, verbose=verbose, max_cases=REPORT_MAX_CASES)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def _plain_report(result: "SuiteResult", *, verbose: bool = False) -> str:
    """The same facts without rich: summary, term x role table, failing cases, diagnosis, verdict."""
    from .report import _view

    lines = [_view.summary_text(result), f"tolerance rule: {result.rule}", "", "Term x role, all cases"]
    header = ("term", "role", "elements", "decision", "value", "borderline", "max abs", "max rel", "max ulps")
    rows = [header] + [(r.term, r.role, str(r.elements), str(r.decision_mismatches), str(r.value_mismatches),
                        str(r.borderline), _view.fmt_num(r.max_abs), _view.fmt_num(r.max_rel), str(r.max_ulps))
                       for r in _view.term_role_rows(result)]
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines += ["  ".join(cell.ljust(w) if k < 2 else cell.rjust(w) for k, (cell, w) in enumerate(zip(row, widths)))
              for row in rows]
    failing = result.failed
    shown = failing if verbose else failing[:REPORT_MAX_CASES]
    for case in shown:
        lines += ["", f"FAILED {case.case}"]
        lines += ["  " + line for line in _view.case_detail_lines(case, None if verbose else 5)]
    if len(shown) < len(failing):
        lines.append(f"... {len(failing) - len(shown)} more failing cases not shown")
    lines += ["", _view.verdict_text(result)]
    return "\n".join(lines)


__all__ = ["DarknetParity", "ParitySession", "Record", "darknet_parity", "render_report"]

"""Running a candidate against the reference over many cases: the one suite runner.

The CLI (``run``, ``replay``) and the pytest plugin both call ``run_suite``.
It takes case descriptors (``parity.cases.CaseRef``: picklable, so
``--jobs`` workers rebuild the cases themselves) or live ``(ref, case)``
pairs with a live candidate (the plugin's callables), compares every case
with ``compare_case`` (the reference, the C reference's decisions as judge,
``parity.compare.compare``, the diagnosis of a failing case) and gathers a
``SuiteResult`` with branch coverage: which darknet branches the reference
took, per profile. Missing coverage is always reported; it fails the run
only where asked (``RunOptions.require_coverage``).
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .candidates import Candidate, load_candidate, run_candidate
from .case import Case
from .config import backward_scale
from .cases import CaseRef, build_cases
from .compare import add_exact, compare
from .diagnosis import diagnose
from .diff import CaseDiff
from .errors import DarknetInputWarning, ParityError
from .facts import slot_facts
from .profiles import case_id, load_profiles
from .reference import run_reference
from .replay import ofast_nonfinite
from .result import LayerRun
from .tolerance import ToleranceRule, build_of, load_tolerances
from .torch_layer import yolo_forward

FINITE_ONLY_SKIP = "its input holds NaN/Inf (--finite-only leaves such cases out)"
SCHEMA = "darknet-parity/suite-result/1"


@dataclass(frozen=True)
class RunOptions:
    """Everything a worker needs besides the case: picklable, no callables."""

    candidate: str = "parity"
    convention: str | None = None
    layout: str = "nchw"
    device: str = "cpu"
    reference: str = "c"
    darknet_lib: str | None = None
    darknet_include: str | None = None
    tolerances: str | None = None
    per_class: bool = False
    top_k: int = 10
    diagnose: bool = True
    profiles_extra: tuple[str, ...] = ()
    require_coverage: bool = False
    finite_only: bool = False        # leave out cases whose input holds NaN/Inf (said in the summary)
    reference_build: str = "auto"    # "auto" (a recording's meta.build, else o2), "o2" or "ofast" (declared)
    backward: str = "cpu"            # the reference's delta as darknet's CPU backward adds it, or its GPU backward's
    loss_scale: float = 1.0          # darknet's [net] loss_scale (the GPU backward's factor with delta_normalizer)


REFERENCE_BUILDS = ("auto", "o2", "ofast")


def reference_build(case: Case, opts: RunOptions) -> str:
    """The build of the reference a case is judged against: declared, else the recording's, else "o2".

    Only a recording's ``meta.build`` or the user's word makes a reference
    -Ofast; the C reference computes the source's (-O2) semantics.
    """
    if opts.reference_build not in REFERENCE_BUILDS:
        raise ParityError(f"reference build {opts.reference_build!r}: expected one of {', '.join(REFERENCE_BUILDS)}")
    if opts.reference_build != "auto":
        return opts.reference_build
    return build_of(case.meta.get("build")) if case.recorded_run() is not None else "o2"


def compare_case(case: Case, opts: RunOptions, name: str | None = None, rule: ToleranceRule | None = None,
                 candidate: Candidate | None = None) -> CaseDiff:
    """Reference and candidate on one case, compared term by term (and diagnosed if failing).

    For a recorded case the recorded delta is the reference (darknet itself);
    the decisions that judge borderline slots, the roles and the branch
    counts always come from the C reference's run on the same input.
    ``candidate`` (a live ``parity.candidates.Candidate``) overrides
    ``opts.candidate`` for in-process callers such as the pytest plugin.

    A candidate that raises or returns the wrong thing, or returns NaN/Inf
    where the reference's delta is finite, gives a result with ``error`` set
    (the CLI's exit code 2). ``DarknetInputWarning`` is silenced here:
    generated suites hold input darknet reads its own way on purpose.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        return _compare_case(case, opts, name, rule or load_tolerances(opts.tolerances), candidate)


def _reference_run(case: Case, opts: RunOptions, judge: LayerRun) -> LayerRun:
    """What the candidate is compared with: the recording, the C reference, or a real libdarknet.

    Its delta is what darknet's backward of ``opts.backward`` adds to the
    previous layer (the layer's delta on the CPU; scaled on the GPU). A
    recording holds the layer's own delta, so it is scaled here too.
    """
    run = case.recorded_run()
    if run is None:
        run = judge if opts.reference == "c" else run_reference(
            case.config, case.input, case.truth, flavor=case.flavor, backend=opts.reference,
            darknet_lib=opts.darknet_lib, darknet_include=opts.darknet_include)
    scale = backward_scale(case.config, case.flavor, opts.backward, opts.loss_scale)
    if scale is None:
        return run
    return dataclasses.replace(run, delta=(np.asarray(run.delta) * np.float32(scale)).astype(np.float32))


def _compare_case(case: Case, opts: RunOptions, name: str | None, rule: ToleranceRule,
                  candidate: Candidate | None) -> CaseDiff:
    name = name or case.name
    if ofast_nonfinite(case) or (opts.finite_only and not np.isfinite(case.input).all()):
        skipped = CaseDiff(name, case.flavor, tuple(case.input.shape), rule.as_dict(), meta=_plain(case.meta))
        skipped.skipped = (FINITE_ONLY_SKIP if opts.finite_only and not ofast_nonfinite(case) else
                           "recorded by darknet's -Ofast build on NaN/Inf input: its isnan checks were compiled "
                           "away, so it is not darknet's source semantics (its -O2 twin is)")
        return skipped
    judge = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    reference = _reference_run(case, opts, judge)
    rule = rule.for_build(reference_build(case, opts))
    facts = slot_facts(case, judge, rule.default.atol, rule.default.rtol)
    if candidate is None:
        candidate = load_candidate(opts.candidate, convention=opts.convention, layout=opts.layout,
                                   device=opts.device)
    try:
        out = run_candidate(candidate, case)
    except ParityError as exc:
        failed = CaseDiff(name, case.flavor, tuple(case.input.shape), rule.as_dict(), branches=judge.branches,
                          meta=_plain(case.meta))
        failed.error = str(exc)
        return failed
    result = compare(reference, LayerRun(None, out.delta, None, backend="candidate"), rule, case=case,
                     decisions=judge, name=name, per_class=opts.per_class, top_k=opts.top_k, facts=facts)
    if any(m.kind == "value" for m in result.mismatches):   # which side is closer: recompute in float64
        exact = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config,
                             case.flavor, dtype=torch.float64, backward=opts.backward, loss_scale=opts.loss_scale)
        add_exact(result, exact.delta.numpy(), 5 + case.config.classes)
    result.meta = _plain(case.meta)
    result.meta["convention"] = out.convention
    result.meta["reference_build"] = rule.reference_build
    if not result.passed and opts.diagnose:
        result.causes = [dataclasses.asdict(c) for c in diagnose(case, reference, out.delta, facts, result)]
    return result


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-scalar part of a case's meta (for reports)."""
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))}


def _run_group(args: tuple[list[CaseRef], RunOptions]) -> list[tuple[str, CaseDiff]]:
    """Compare every case of one sweep (generated once); errors become failed results."""
    refs, opts = args
    out = []
    try:
        rule = load_tolerances(opts.tolerances)
        for ref, case in build_cases(refs, opts.profiles_extra):
            try:
                out.append((ref.id, compare_case(case, opts, name=ref.id, rule=rule)))
            except ParityError as exc:
                out.append((ref.id, _broken(ref.id, str(exc))))
    except ParityError as exc:
        done = {rid for rid, _ in out}
        out += [(r.id, _broken(r.id, str(exc))) for r in refs if r.id not in done]
    return out


def _broken(name: str, message: str) -> CaseDiff:
    broken = CaseDiff(name, "", (), {})
    broken.error = message
    return broken


def _worker_init() -> None:
    torch.set_num_threads(1)


def _groups(refs: Sequence[CaseRef]) -> list[list[CaseRef]]:
    """Units of work: one sweep (profile/cfg), or one recorded file."""
    groups: dict[tuple[str, ...], list[CaseRef]] = {}
    for ref in refs:
        key = ("file", ref.source) if ref.kind == "file" else (ref.kind, ref.source, str(ref.seed), str(ref.count))
        groups.setdefault(key, []).append(ref)
    return list(groups.values())


def _run_refs(refs: Sequence[CaseRef], opts: RunOptions, jobs: int,
              collect: Callable[[list[tuple[str, CaseDiff]]], None]) -> None:
    """Descriptors, whole sweeps per unit of work; ``jobs`` > 1 uses worker processes
    (spawned: torch is not fork-safe)."""
    work = [(g, opts) for g in _groups(refs)]
    if jobs <= 1:
        for item in work:
            collect(_run_group(item))
        return
    import multiprocessing as mp   # lazy: only --jobs runs need it

    with mp.get_context("spawn").Pool(jobs, initializer=_worker_init) as pool:
        for batch in pool.imap_unordered(_run_group, work):
            collect(batch)


def _run_live(pairs: Iterable[tuple[CaseRef, Case]], opts: RunOptions, candidate: Candidate | None,
              rule: ToleranceRule, collect: Callable[[list[tuple[str, CaseDiff]]], None]) -> list[CaseRef]:
    """Live cases (and maybe a live candidate) in this process; returns the refs in order.

    Results are named by the case's own id ("tiny.cfg#1/head0": sample and head), as a test reads them.
    """
    refs = []
    for ref, case in pairs:
        refs.append(ref)
        try:
            collect([(ref.id, compare_case(case, opts, name=case_id(case), rule=rule, candidate=candidate))])
        except ParityError as exc:
            collect([(ref.id, _broken(ref.id, str(exc)))])
    return refs


@dataclass
class SuiteResult:
    """All case results of a run (or of merged shards) plus branch coverage."""

    cases: list[CaseDiff] = field(default_factory=list)
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)      # group -> branch -> cases hitting it
    enabled: dict[str, list[str]] = field(default_factory=dict)            # group -> branches its configs enable
    options: dict[str, Any] = field(default_factory=dict)
    rule: str = ""
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)
    require_coverage: bool = False        # missing branch coverage fails the run (else it is only reported)
    notes: list[str] = field(default_factory=list)   # what the run did NOT check, said in the summary

    @property
    def failed(self) -> list[CaseDiff]:
        return [c for c in self.cases if not c.passed]

    @property
    def missing_branches(self) -> dict[str, list[str]]:
        """Branches a group's configs enable that no case of the group reached."""
        out = {}
        for group, enabled in self.enabled.items():
            hit = self.coverage.get(group, {})
            missing = sorted(b for b in enabled if not hit.get(b))
            if missing:
                out[group] = missing
        return out

    @property
    def passed(self) -> bool:
        return not self.failed and not (self.require_coverage and self.missing_branches)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "passed": self.passed, "cases": [c.to_json() for c in self.cases],
                "coverage": self.coverage, "enabled": self.enabled, "options": self.options, "rule": self.rule,
                "seconds": self.seconds, "shards": self.shards, "require_coverage": self.require_coverage,
                "notes": self.notes}

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=1, default=float))

    @classmethod
    def load(cls, path: str | Path) -> "SuiteResult":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ParityError(f"{path}: not a readable suite result: {exc}") from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ParityError(f"{path}: not a darknet-parity suite result (schema {SCHEMA})")
        try:
            return cls([CaseDiff.from_json(c) for c in data["cases"]], data["coverage"], data["enabled"],
                       data.get("options", {}), data.get("rule", ""), data.get("seconds", 0.0),
                       data.get("shards", []), bool(data.get("require_coverage", False)),
                       list(data.get("notes", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ParityError(f"{path}: a damaged suite result ({type(exc).__name__}: {exc})") from None


def group_of(ref: CaseRef) -> str:
    """Coverage is judged per profile, per cfg, or per recorded folder."""
    return ref.source if ref.kind != "file" else str(Path(ref.source).parent)


def coverage(refs: Sequence[CaseRef], results: Sequence[CaseDiff],
             profiles_extra: Sequence[str] = ()) -> tuple[dict, dict]:
    """Per group: how many cases hit each branch, and (profiles only) which branches their heads enable."""
    hit: dict[str, dict[str, int]] = {}
    for ref, res in zip(refs, results):
        counts = hit.setdefault(group_of(ref), {})
        for name, count in res.branches.items():
            counts[name] = counts.get(name, 0) + (1 if count else 0)
    enabled: dict[str, list[str]] = {}
    names = sorted({r.source for r in refs if r.kind == "profile"})
    if names:
        profiles = load_profiles(profiles_extra)
        for name in names:
            heads = range(len(profiles[name].heads))
            enabled[name] = sorted(set().union(*(profiles[name].enabled_branches(h) for h in heads)))
    return hit, enabled


def run_suite(cases: Sequence[CaseRef] | Iterable[tuple[CaseRef, Case]], opts: RunOptions, *, jobs: int = 1,
              progress: Callable[[CaseDiff], None] | None = None, shard_spec: str | None = None,
              candidate: Candidate | None = None, rule: ToleranceRule | None = None,
              options: dict[str, Any] | None = None) -> SuiteResult:
    """Run a suite and gather results, coverage and the rule in force: the CLI's and the plugin's runner.

    ``cases`` are descriptors (rebuilt where they run; ``jobs`` > 1 spreads
    whole sweeps over worker processes) or live ``(ref, case)`` pairs.
    ``candidate`` (a live Candidate, e.g. a test's callable) and ``rule`` (a
    live ToleranceRule) override ``opts.candidate``/``opts.tolerances``;
    live inputs run in this process. ``options`` adds entries to the
    result's recorded options. Torch runs single-threaded per process (small
    per-case tensors: threads only add synchronisation).
    """
    start = time.perf_counter()
    rule = rule or load_tolerances(opts.tolerances)
    by_id: dict[str, CaseDiff] = {}

    def collect(batch: list[tuple[str, CaseDiff]]) -> None:
        for rid, res in batch:
            by_id[rid] = res
            if progress:
                progress(res)

    cases = cases if isinstance(cases, Sequence) else list(cases)
    live = candidate is not None or any(not isinstance(c, CaseRef) for c in cases)
    if live and jobs > 1:
        raise ParityError("--jobs > 1 needs a candidate spec string ('module:callable') and case descriptors; "
                          "a live callable runs in this process")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if any(not isinstance(c, CaseRef) for c in cases):
            refs = _run_live(cases, opts, candidate, rule, collect)
        elif candidate is not None:
            refs = _run_live(build_cases(cases, opts.profiles_extra), opts, candidate, rule, collect)
        else:
            refs = list(cases)
            _run_refs(refs, opts, jobs, collect)
    finally:
        torch.set_num_threads(threads)
    results = [by_id[r.id] for r in refs]
    hit, enabled = coverage(refs, results, opts.profiles_extra)
    recorded = dataclasses.asdict(opts)
    recorded.update(options or {})
    left_out = sum(1 for r in results if r.skipped == FINITE_ONLY_SKIP)
    notes = [f"{left_out} case(s) whose input holds NaN/Inf were left out (--finite-only)"] if left_out else []
    return SuiteResult(results, hit, enabled, recorded, _rule_text(rule, results), time.perf_counter() - start,
                       [shard_spec] if shard_spec else [], opts.require_coverage, notes)


def _rule_text(rule: ToleranceRule, results: Sequence[CaseDiff]) -> str:
    """The rule in force, with the -Ofast bound where some case's reference was -Ofast."""
    ofast = sum(1 for r in results if r.meta.get("reference_build") == "ofast")
    if not ofast:
        return rule.describe()
    scope = "" if ofast == len(results) else f" (for the {ofast} case(s) whose reference is -Ofast)"
    return rule.for_build("ofast").describe() + scope


def merge(results: Iterable[SuiteResult]) -> SuiteResult:
    """Combine shard results into one (cases concatenated, coverage summed)."""
    merged = SuiteResult()
    for res in results:
        merged.cases += res.cases
        for group, counts in res.coverage.items():
            into = merged.coverage.setdefault(group, {})
            for name, count in counts.items():
                into[name] = into.get(name, 0) + count
        for group, names in res.enabled.items():
            merged.enabled[group] = sorted(set(merged.enabled.get(group, [])) | set(names))
        merged.options = merged.options or res.options
        merged.rule = merged.rule or res.rule
        merged.seconds += res.seconds
        merged.shards += res.shards
        merged.require_coverage = merged.require_coverage or res.require_coverage
        merged.notes += [n for n in res.notes if n not in merged.notes]
    return merged

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

Nothing hangs and no case passes that did not run: with ``jobs`` the cases
run in worker processes (``parity.pool``) where a candidate that crashes,
exits or hangs costs its own case only (an error naming the candidate); in
this process ``sys.exit``/``os._exit``/``KeyboardInterrupt`` from a candidate
and a per-case time limit are errors too. SIGINT/SIGTERM stop the run: the
result keeps the cases done so far and says it is incomplete.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .candidates import Candidate, load_candidate, run_candidate
from .case import Case
from .atomic import write_atomic
from .cases import CaseRef, build_samples
from .config import backward_scale
from .compare import add_exact, compare
from .diagnosis import diagnose
from .diff import CaseDiff
from .errors import CaseTimeout, DarknetInputWarning, Interrupted, ParityError
from .facts import slot_facts
from .network import Sample
from .pool import interrupts, run_isolated, time_limit
from .profiles import case_id, load_profiles
from .reference import run_reference
from .replay import ofast_nonfinite
from .result import LayerRun
from .tolerance import ToleranceRule, build_of, load_tolerances
from .torch_layer import yolo_forward

FINITE_ONLY_SKIP = "its input holds NaN/Inf (--finite-only leaves such cases out)"
SCHEMA = "darknet-parity/suite-result/1"
# Seconds one case may take before it is an error (--timeout): a YOLOv4 case takes about a second.
DEFAULT_TIMEOUT = 600.0
# Extra seconds the parent waits for a worker beyond the case's limit, so the worker's own message wins.
TIMEOUT_GRACE = 10.0
_OUT_OF_MEMORY = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


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
    framework: str | None = None     # the candidate's: torch, jax or tf (None: detected)
    network: bool = False            # the candidate takes every head of a sample at once
    finite_only: bool = False        # leave out cases whose input holds NaN/Inf (said in the summary)
    timeout: float | None = DEFAULT_TIMEOUT     # seconds per case; None: no limit
    reference_build: str = "auto"    # "auto" (a recording's meta.build, else o2), "o2" or "ofast" (declared)
    backward: str = "cpu"            # the reference's delta as darknet's CPU backward adds it, or its GPU backward's
    loss_scale: float = 1.0          # darknet's [net] loss_scale (the GPU backward's factor with delta_normalizer)
    search: bool = False             # explain failures: the deviations under which darknet reproduces the candidate


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
                 candidate: Candidate | None = None, sample: Sample | None = None) -> CaseDiff:
    """Reference and candidate on one case, compared term by term (and diagnosed if failing).

    For a recorded case the recorded delta is the reference (darknet itself);
    the decisions that judge borderline slots, the roles and the branch
    counts always come from the C reference's run on the same input.
    ``candidate`` (a live ``parity.candidates.Candidate``) overrides
    ``opts.candidate`` for in-process callers such as the pytest plugin.
    ``sample`` holds every head of the case's sample, for a whole-network
    candidate (run once per sample; without it the case is a one-head sample).

    A candidate that raises or returns the wrong thing, or returns NaN/Inf
    where the reference's delta is finite, gives a result with ``error`` set
    (the CLI's exit code 2). ``DarknetInputWarning`` is silenced here:
    generated suites hold input darknet reads its own way on purpose.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        return _compare_case(case, opts, name, rule or load_tolerances(opts.tolerances), candidate, sample)


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
                  candidate: Candidate | None, sample: Sample | None) -> CaseDiff:
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
                                   device=opts.device, framework=opts.framework, network=opts.network)
    try:
        if candidate.network:
            out = (sample or Sample([case])).output_for(candidate, case)
        else:
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
    if opts.search:     # a passing case's delta is darknet's: the search does not need it kept
        result.source = case
        if not result.passed:
            result.candidate_delta = np.asarray(out.delta, dtype=np.float32)
    result.meta["reference_build"] = rule.reference_build
    if not result.passed and opts.diagnose:
        result.causes = [dataclasses.asdict(c) for c in diagnose(case, reference, out.delta, facts, result)]
    return result


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-scalar part of a case's meta (for reports)."""
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))}


def _run_group(refs: list[CaseRef], opts: RunOptions, *, emit: Callable[[str, CaseDiff], None]) -> None:
    """Compare every case of one sweep (generated once), emitting each result as it finishes.

    Errors become results: a bad case file or a sweep that cannot be built is
    an error of the cases it names, and the other groups still run.
    """
    done: set[str] = set()
    samples: dict[int, Sample] = {}
    try:
        rule = load_tolerances(opts.tolerances)
        for ref, case, heads in build_samples(refs, opts.profiles_extra):
            sample = samples.setdefault(id(heads), Sample(heads)) if opts.network else None
            emit(ref.id, _one_case(ref, case, opts, rule, sample))
            done.add(ref.id)
    except ParityError as exc:
        for r in refs:
            if r.id not in done:
                emit(r.id, _broken(r.id, str(exc)))


def _one_case(ref: CaseRef, case: Case, opts: RunOptions, rule: ToleranceRule,
              sample: Sample | None = None) -> CaseDiff:
    """One case's result; a time-out or an out-of-memory is that case's error."""
    try:
        with time_limit(opts.timeout):
            return compare_case(case, opts, name=ref.id, rule=rule, sample=sample)
    except ParityError as exc:
        return _broken(ref.id, str(exc))
    except CaseTimeout:
        return _broken(ref.id, f"candidate {opts.candidate!r}: no result within {opts.timeout:g} s (--timeout)")
    except _OUT_OF_MEMORY as exc:
        return _broken(ref.id, f"out of memory on this case (input {'x'.join(map(str, case.input.shape))}, "
                               f"{case.input.nbytes / 2**20:.1f} MiB as float32; candidate {opts.candidate!r}): "
                               f"{type(exc).__name__}: {str(exc).strip()[:200]}")


def _broken(name: str, message: str) -> CaseDiff:
    broken = CaseDiff(name, "", (), {})
    broken.error = message
    return broken


def _groups(refs: Sequence[CaseRef]) -> list[list[CaseRef]]:
    """Units of work: one sweep (profile/cfg), or one recorded file."""
    groups: dict[tuple[str, ...], list[CaseRef]] = {}
    for ref in refs:
        key = ("file", ref.source) if ref.kind == "file" else (ref.kind, ref.source, str(ref.seed), str(ref.count))
        groups.setdefault(key, []).append(ref)
    return list(groups.values())


def _run_refs(refs: Sequence[CaseRef], opts: RunOptions, jobs: int | None,
              collect: Callable[[list[tuple[str, CaseDiff]]], None]) -> None:
    """Descriptors, whole sweeps per unit of work: in this process (``jobs`` None), or in
    ``jobs`` spawned worker processes (torch is not fork-safe) that may die or hang."""
    groups = _groups(refs)
    if jobs is None:
        for group in groups:
            _run_group(group, opts, emit=lambda rid, res: collect([(rid, res)]))
        return

    def lost(rid: str, why: str) -> None:
        collect([(rid, _broken(rid, f"candidate {opts.candidate!r}: {why}"))])

    limit = None if opts.timeout is None else opts.timeout + TIMEOUT_GRACE
    run_isolated(groups, lambda ref: ref.id, _worker_group, (opts,), jobs, limit,
                 lambda rid, res: collect([(rid, res)]), lost)


def _worker_group(refs: list[CaseRef], opts: RunOptions, *, emit: Callable[[str, CaseDiff], None]) -> None:
    """``_run_group`` in a worker process: one torch thread (small per-case tensors)."""
    torch.set_num_threads(1)
    _run_group(refs, opts, emit=emit)


def _run_live(pairs: Iterable[tuple[CaseRef, Case]], opts: RunOptions, candidate: Candidate | None,
              rule: ToleranceRule, collect: Callable[[list[tuple[str, CaseDiff]]], None],
              refs: list[CaseRef]) -> None:
    """Live cases (and maybe a live candidate) in this process; appends the refs to ``refs`` in order.

    Results are named by the case's own id ("tiny.cfg#1/head0": sample and head), as a test reads them.
    """
    network = candidate.network if candidate is not None else opts.network
    for ref, case, sample in _with_samples(pairs, network):
        refs.append(ref)
        try:
            collect([(ref.id, compare_case(case, opts, name=case_id(case), rule=rule, candidate=candidate,
                                           sample=sample))])
        except ParityError as exc:
            collect([(ref.id, _broken(ref.id, str(exc)))])


def _with_samples(pairs: Iterable[tuple], network: bool) -> Iterator[tuple[CaseRef, Case, Sample | None]]:
    """``(ref, case, sample)``: for a whole-network candidate the heads of one sample share a ``Sample``.

    ``pairs`` are ``(ref, case)`` (consecutive heads of a sample are grouped by
    the case's sample number) or ``(ref, case, heads)`` from ``build_samples``.
    """
    if not network:
        for item in pairs:
            yield item[0], item[1], None
        return
    shared: dict[int, Sample] = {}
    buffer: list[tuple[CaseRef, Case]] = []

    def flush() -> Iterator[tuple[CaseRef, Case, Sample | None]]:
        sample = Sample([c for _, c in buffer])
        for ref, case in buffer:
            yield ref, case, sample
        buffer.clear()

    for item in pairs:
        if len(item) == 3:
            yield item[0], item[1], shared.setdefault(id(item[2]), Sample(item[2]))
            continue
        ref, case = item
        if buffer and (case.meta.get("sample") is None or case.meta.get("sample") != buffer[-1][1].meta.get("sample")
                       or ref.source != buffer[-1][0].source):
            yield from flush()
        buffer.append((ref, case))
    yield from flush() if buffer else iter(())


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
    incomplete: str = ""                  # why some cases never ran (an interrupt); "" for a whole run
    explanation: dict[str, Any] | None = None   # the search's deviations (Explanation.as_dict), if it ran

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
    def whole_suite(self) -> bool:
        """Not one shard: a plain run, or shards merged into all of 1/N..N/N."""
        if not self.shards:
            return True
        counts = {s.split("/")[1] for s in self.shards}
        return len(counts) == 1 and sorted(self.shards) == sorted(f"{i}/{n}" for n in counts
                                                                  for i in range(1, int(n) + 1))

    @property
    def coverage_fails(self) -> bool:
        """Missing branch coverage fails a run only where asked for, and never a single shard."""
        return self.require_coverage and self.whole_suite and bool(self.missing_branches)

    @property
    def passed(self) -> bool:
        return not self.failed and not self.incomplete and not self.coverage_fails

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "passed": self.passed, "cases": [c.to_json() for c in self.cases],
                "coverage": self.coverage, "enabled": self.enabled, "options": self.options, "rule": self.rule,
                "seconds": self.seconds, "shards": self.shards, "require_coverage": self.require_coverage,
                "notes": self.notes, "incomplete": self.incomplete, "explanation": self.explanation}

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_json(), indent=1, default=float).encode())

    @classmethod
    def load(cls, path: str | Path) -> "SuiteResult":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ParityError(f"{path}: not a readable suite result: {exc}") from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ParityError(f"{path}: not a darknet-parity suite result (schema {SCHEMA})")
        missing = [key for key in ("cases", "coverage", "enabled") if key not in data]
        if missing:
            raise ParityError(f"{path}: a suite result without {', '.join(repr(k) for k in missing)} "
                              "(not written by run --json, or cut short)")
        try:
            return cls([CaseDiff.from_json(c) for c in data["cases"]], data["coverage"], data["enabled"],
                       data.get("options", {}), data.get("rule", ""), data.get("seconds", 0.0),
                       data.get("shards", []), bool(data.get("require_coverage", False)),
                       list(data.get("notes", [])), str(data.get("incomplete", "")), data.get("explanation"))
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


def run_suite(cases: Sequence[CaseRef] | Iterable[tuple[CaseRef, Case]], opts: RunOptions, *,
              jobs: int | None = None,
              progress: Callable[[CaseDiff], None] | None = None, shard_spec: str | None = None,
              candidate: Candidate | None = None, rule: ToleranceRule | None = None,
              options: dict[str, Any] | None = None) -> SuiteResult:
    """Run a suite and gather results, coverage and the rule in force: the CLI's and the plugin's runner.

    ``cases`` are descriptors (rebuilt where they run; ``jobs`` N spreads
    whole sweeps over N worker processes, None runs them here) or live
    ``(ref, case)`` pairs. SIGINT/SIGTERM end the run early: the result holds
    the cases done and ``incomplete`` says why.
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
    if live and jobs is not None:
        raise ParityError("--jobs needs a candidate spec string ('module:callable') and case descriptors; "
                          "a live callable runs in this process")
    refs: list[CaseRef] = []
    incomplete = ""
    try:
        with one_torch_thread(), interrupts():
            if any(not isinstance(c, CaseRef) for c in cases):
                _run_live(cases, opts, candidate, rule, collect, refs)
            elif candidate is not None:
                _run_live(build_samples(cases, opts.profiles_extra), opts, candidate, rule, collect, refs)
            else:
                refs += cases
                _run_refs(refs, opts, jobs, collect)
    except Interrupted as exc:
        total = len(refs) if candidate is None and all(isinstance(c, CaseRef) for c in cases) else len(cases)
        incomplete = (f"{exc}: {sum(r.id in by_id for r in refs)} of {total} case(s) ran; "
                      "the others never did")
    refs = [r for r in refs if r.id in by_id]
    results = [by_id[r.id] for r in refs]
    hit, enabled = coverage(refs, results, opts.profiles_extra)
    recorded = dataclasses.asdict(opts)
    recorded.update(options or {})
    left_out = sum(1 for r in results if r.skipped == FINITE_ONLY_SKIP)
    notes = [f"{left_out} case(s) whose input holds NaN/Inf were left out (--finite-only)"] if left_out else []
    explanation = None
    if opts.search and not incomplete:
        try:
            explanation = explain(results, rule)
        except Exception as exc:    # the verdict stands without it; say why it is missing
            notes.append(f"the explanation search failed ({type(exc).__name__}: {exc}); the verdict above stands")
    return SuiteResult(results, hit, enabled, recorded, _rule_text(rule, results), time.perf_counter() - start,
                       [shard_spec] if shard_spec else [], opts.require_coverage, notes, incomplete, explanation)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread (small per-case tensors: threads only add synchronisation), then as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def explain(results: Sequence[CaseDiff], rule: ToleranceRule) -> dict[str, Any] | None:
    """The explanation search over every compared case, when some failed (``parity.deviations.search``).

    Every case that ran takes part (a deviation must also keep the passing
    cases passing; for those, darknet's delta stands for the candidate's,
    which the run does not keep). The cases and deltas are dropped afterwards.
    """
    from .deviations.search import SearchCase, search

    ran = [r for r in results if r.source is not None]
    try:
        if not any(not r.passed for r in ran):
            return None
        cases = [SearchCase(r.case, r.source, r.candidate_delta,
                            rule.for_build(r.meta.get("reference_build", "o2"))) for r in ran]
        with one_torch_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DarknetInputWarning)
            return search(cases).as_dict()
    finally:
        for r in ran:
            r.candidate_delta = r.source = None


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
        merged.incomplete = "; ".join(x for x in (merged.incomplete, res.incomplete) if x)
    if len(merged.shards) > 1 and merged.failed:
        note = ("the explanation search runs within one run: merged shards carry none (run the suite without "
                "--shard for it)")
        merged.notes += [note] if note not in merged.notes else []
    return merged


# What shards of one run share (RunOptions fields and run's own options), checked by ``check_shards``.
SHARD_KEYS = ("suite", "seed", "cases", "candidate", "convention", "layout", "reference", "tolerances",
              "profiles_extra", "per_class")


def check_shards(results: Sequence[tuple[str, SuiteResult]]) -> None:
    """ParityError unless ``results`` are the whole set of shards of one run, each once.

    Same suite, seed, candidate and tolerances (the rule in force), one shard
    count, every index 1..N exactly once, no case in two shards.
    """
    if len(results) == 1 and not results[0][1].shards:
        return
    specs: dict[int, str] = {}
    count = None
    first_path, first = results[0]
    seen: dict[str, str] = {}
    for path, res in results:
        if not res.cases:
            raise ParityError(f"{path}: holds no cases")
        if len(res.shards) != 1:
            raise ParityError(f"{path}: not one shard (run --shard I/N --json writes one); it lists "
                              f"{len(res.shards)} shard(s)")
        try:
            index, total = (int(v) for v in res.shards[0].split("/"))
        except ValueError:
            raise ParityError(f"{path}: shard {res.shards[0]!r} is not I/N") from None
        if count is not None and total != count:
            raise ParityError(f"{path}: shard {index}/{total} is from a run in {total} shards, {first_path} from "
                              f"one in {count}")
        count = total
        if index in specs:
            raise ParityError(f"{path}: shard {index}/{total} again (also {specs[index]})")
        specs[index] = path
        for key in SHARD_KEYS:
            if res.options.get(key) != first.options.get(key):
                raise ParityError(f"{path}: {key} {res.options.get(key)!r} differs from {first_path}'s "
                                  f"{first.options.get(key)!r}: not shards of one run")
        if res.rule != first.rule:
            raise ParityError(f"{path}: its tolerance rule differs from {first_path}'s: not shards of one run")
        for case in res.cases:
            if case.case in seen:
                raise ParityError(f"{path}: case {case.case} is also in {seen[case.case]}")
            seen[case.case] = path
    missing = [k for k in range(1, (count or 0) + 1) if k not in specs]
    if missing:
        raise ParityError(f"shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing: "
                          f"{len(specs)} of {count} given")

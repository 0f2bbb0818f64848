"""Running a candidate against the reference over many cases: the harness's orchestration.

A suite is a list of case descriptors (a profile and an index, a real cfg, or
a recorded file) that any process can turn back into the same case, so
``--jobs`` workers and ``--shard I/N`` CI jobs need nothing but the
descriptors and the options. Each case gives one ``CaseDiff``; the suite adds
branch coverage (which darknet branches the reference took, per profile) and
fails when a branch a profile's configs enable is never hit.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .case import Case, load_case
from .diff import CaseDiff, ToleranceRule, add_exact, diff_case, load_tolerances
from .errors import ParityError

SCHEMA = "darknet-parity/suite-result/1"


@dataclass(frozen=True)
class CaseRef:
    """How to rebuild one case: ``kind`` is "profile", "cfg" or "file"."""

    kind: str
    source: str          # profile name, cfg path or case file path
    index: int = 0       # position of the case in its sweep (sample * heads + head)
    seed: int = 0
    count: int = 1       # samples in the sweep (each sample gives one case per head)

    @property
    def id(self) -> str:
        if self.kind == "file":
            return self.source
        return f"{self.source}#{self.index}"


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


def suite_refs(profiles: Sequence[str], cfgs: Sequence[str], files: Sequence[str], cases: int | None,
               seed: int, profiles_extra: Sequence[str] = ()) -> list[CaseRef]:
    """The descriptors of a suite, in a deterministic order.

    ``cases`` samples per profile or cfg (None: each profile's own count, 4 per cfg).
    """
    from .cfg import load_cfg
    from .profiles import load_profiles
    from .replay import case_paths

    refs: list[CaseRef] = []
    if cases is not None and cases < 1:
        raise ParityError(f"--cases {cases}: must be at least 1")
    if profiles:
        known = load_profiles(profiles_extra)
        for name in profiles:
            if name not in known:
                raise ParityError(f"unknown profile {name!r}; known: {', '.join(sorted(known))}")
            count = cases if cases is not None else known[name].count
            total = count * len(known[name].heads)
            refs += [CaseRef("profile", name, k, seed, count) for k in range(total)]
    for cfg in cfgs:
        if not Path(cfg).is_file():
            raise ParityError(f"{cfg}: no such cfg file")
        count = cases if cases is not None else 4
        layers = len(load_cfg(cfg).yolo_layers)
        if not layers:
            raise ParityError(f"{cfg}: no [yolo] section, so there is no layer to check")
        total = count * layers
        refs += [CaseRef("cfg", str(cfg), k, seed, count) for k in range(total)]
    for folder in files:
        if Path(folder).is_dir() and not any(Path(folder).rglob("*.npz")):
            raise ParityError(f"{folder}: a folder with no case files (.npz) in it")
    refs += [CaseRef("file", str(p)) for p in case_paths(files)]
    return refs


def shard(refs: Sequence[CaseRef], spec: str | None) -> list[CaseRef]:
    """``I/N`` (1 <= I <= N): every N-th case starting at the I-th; deterministic."""
    if not spec:
        return list(refs)
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ParityError(f"--shard {spec!r}: expected I/N with integers, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise ParityError(f"--shard {spec!r}: I must lie in 1..N")
    return [r for k, r in enumerate(refs) if k % n == i - 1]


def _sweep(ref: CaseRef, profiles_extra: Sequence[str]) -> Iterator[Case]:
    """Every case of the sweep ``ref`` belongs to, in order."""
    from .profiles import cfg_cases, load_profiles, profile_cases

    if ref.kind == "profile":
        return profile_cases(load_profiles(profiles_extra)[ref.source], ref.count, ref.seed)
    if ref.kind == "cfg":
        return cfg_cases(ref.source, ref.count, ref.seed)
    raise ParityError(f"unknown case kind {ref.kind!r}")


def build_cases(refs: Sequence[CaseRef], profiles_extra: Sequence[str] = ()) -> Iterator[tuple[CaseRef, Case]]:
    """The cases ``refs`` name; each sweep is generated once, in one pass."""
    pending: dict[tuple[str, str, int, int], dict[int, CaseRef]] = {}
    for ref in refs:
        if ref.kind == "file":
            yield ref, load_case(ref.source)
        else:
            pending.setdefault((ref.kind, ref.source, ref.seed, ref.count), {})[ref.index] = ref
    for wanted in pending.values():
        first = next(iter(wanted.values()))
        last = max(wanted)
        for k, case in enumerate(_sweep(first, profiles_extra)):
            if k in wanted:
                yield wanted[k], case
            if k >= last:
                break
        else:
            raise ParityError(f"{first.source}: the sweep has fewer than {last + 1} cases")


def build_case(ref: CaseRef, profiles_extra: Sequence[str] = ()) -> Case:
    """The one case a descriptor names."""
    return next(case for _, case in build_cases([ref], profiles_extra))


def compare_case(case: Case, opts: RunOptions, name: str | None = None, rule: ToleranceRule | None = None,
                 candidate: Any = None) -> CaseDiff:
    """Reference and candidate on one case, compared term by term (and diagnosed if failing).

    For a recorded case the recorded delta is the reference (darknet itself);
    decisions and branch counts come from the C reference either way.
    ``candidate`` (a ``parity.candidates.Candidate``) overrides ``opts.candidate``
    for in-process callers such as the pytest plugin.

    A candidate that raises or returns the wrong thing, or returns NaN/Inf
    where the reference's delta is finite, gives a result with ``error`` set
    (the CLI's exit code 2). ``DarknetInputWarning`` is silenced here:
    generated suites hold input darknet reads its own way on purpose.
    """
    import warnings

    from .errors import DarknetInputWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        return _compare_case(case, opts, name, rule, candidate)


def _compare_case(case: Case, opts: RunOptions, name: str | None, rule: ToleranceRule | None,
                  candidate: Any) -> CaseDiff:
    import torch

    from .candidates import load_candidate, run_candidate
    from .facts import slot_facts
    from .reference import run_reference
    from .torch import yolo_forward

    from .replay import ofast_nonfinite

    name = name or case.name
    rule = rule or load_tolerances(opts.tolerances)
    if ofast_nonfinite(case):
        skipped = CaseDiff(name, case.flavor, tuple(case.input.shape), rule.as_dict(), meta=_plain(case.meta))
        skipped.skipped = ("recorded by darknet's -Ofast build on NaN/Inf input: its isnan checks were compiled "
                           "away, so it is not darknet's source semantics (its -O2 twin is)")
        return skipped
    ours = run_reference(case.config, case.input, case.truth, flavor=case.flavor)
    if case.delta is not None:
        ref_delta = case.delta
    elif opts.reference == "c":
        ref_delta = ours.delta
    else:
        ref_delta = run_reference(case.config, case.input, case.truth, flavor=case.flavor, backend=opts.reference,
                                  darknet_lib=opts.darknet_lib, darknet_include=opts.darknet_include).delta
    facts = slot_facts(case, ours.roles, rule.default.atol, rule.default.rtol, output=ours.output)
    if candidate is None:
        candidate = load_candidate(opts.candidate, convention=opts.convention, layout=opts.layout,
                                   device=opts.device)
    try:
        out = run_candidate(candidate, case)
        if out.nonfinite:
            _check_nonfinite(candidate, case, out.delta, ref_delta)
    except ParityError as exc:
        failed = CaseDiff(name, case.flavor, tuple(case.input.shape), rule.as_dict(), branches=ours.branches,
                          meta=dict(case.meta))
        failed.error = str(exc)
        return failed
    result = diff_case(name, case.flavor, ref_delta, out.delta, facts, rule=rule, per_class=opts.per_class,
                       top_k=opts.top_k, branches=ours.branches)
    if any(m.kind == "value" for m in result.mismatches):   # which side is closer: recompute in float64
        _, d64, _ = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config,
                                 case.flavor, dtype=torch.float64)
        add_exact(result, d64.numpy(), 5 + case.config.classes)
    result.meta = _plain(case.meta)
    result.meta["convention"] = out.convention
    if not result.passed and opts.diagnose:
        from .diagnosis import diagnose

        result.causes = [dataclasses.asdict(c) for c in diagnose(case, ours, out.delta, facts, result)]
    return result


def _check_nonfinite(candidate: Any, case: Case, delta: np.ndarray, ref_delta: np.ndarray) -> None:
    """ParityError where the candidate's delta is NaN/Inf and darknet's is finite there."""
    bad = ~np.isfinite(delta) & np.isfinite(ref_delta)
    count = int(bad.sum())
    if not count:
        return
    b, ch, j, i = (int(v) for v in np.argwhere(bad)[0])
    entries = 5 + case.config.classes
    a, entry = divmod(ch, entries)
    term = ("x", "y", "w", "h", "obj")[entry] if entry < 5 else f"cls{entry - 5}"
    raise ParityError(
        f"candidate {candidate.name!r} returned {count} NaN/Inf value{'s' if count != 1 else ''} where darknet's "
        f"delta is finite (first at image {b}, anchor {a}, cell (j={j}, i={i}), term {term}: candidate "
        f"{float(delta[b, ch, j, i])!r}, darknet {float(ref_delta[b, ch, j, i])!r})")


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
    import torch

    torch.set_num_threads(1)


def _groups(refs: Sequence[CaseRef]) -> list[list[CaseRef]]:
    """Units of work: one sweep (profile/cfg), or one recorded file."""
    groups: dict[tuple[str, ...], list[CaseRef]] = {}
    for ref in refs:
        key = ("file", ref.source) if ref.kind == "file" else (ref.kind, ref.source, str(ref.seed), str(ref.count))
        groups.setdefault(key, []).append(ref)
    return list(groups.values())


def run_cases(refs: Sequence[CaseRef], opts: RunOptions, jobs: int = 1,
              progress: Callable[[CaseDiff], None] | None = None) -> list[CaseDiff]:
    """Every case, returned in ``refs`` order; ``jobs`` > 1 uses worker processes
    (spawned: torch is not fork-safe), each taking whole sweeps."""
    work = [(g, opts) for g in _groups(refs)]
    by_id: dict[str, CaseDiff] = {}

    def collect(batch: list[tuple[str, CaseDiff]]) -> None:
        for rid, res in batch:
            by_id[rid] = res
            if progress:
                progress(res)

    if jobs <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)   # small per-case tensors: threads only add synchronisation
        try:
            for item in work:
                collect(_run_group(item))
        finally:
            torch.set_num_threads(threads)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs, initializer=_worker_init) as pool:
            for batch in pool.imap_unordered(_run_group, work):
                collect(batch)
    return [by_id[r.id] for r in refs]


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
        return not self.failed and not self.missing_branches

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "passed": self.passed, "cases": [c.to_json() for c in self.cases],
                "coverage": self.coverage, "enabled": self.enabled, "options": self.options, "rule": self.rule,
                "seconds": self.seconds, "shards": self.shards}

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
        return cls([CaseDiff.from_json(c) for c in data["cases"]], data["coverage"], data["enabled"],
                   data.get("options", {}), data.get("rule", ""), data.get("seconds", 0.0), data.get("shards", []))


def group_of(ref: CaseRef) -> str:
    """Coverage is judged per profile, per cfg, or per recorded folder."""
    return ref.source if ref.kind != "file" else str(Path(ref.source).parent)


def coverage(refs: Sequence[CaseRef], results: Sequence[CaseDiff],
             profiles_extra: Sequence[str] = ()) -> tuple[dict, dict]:
    """Per group: how many cases hit each branch, and (profiles only) which branches their heads enable."""
    from .profiles import load_profiles

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


def run_suite(refs: Sequence[CaseRef], opts: RunOptions, jobs: int = 1,
              progress: Callable[[CaseDiff], None] | None = None, shard_spec: str | None = None) -> SuiteResult:
    """Run ``refs`` and gather results, coverage and the rule in force."""
    start = time.perf_counter()
    results = run_cases(refs, opts, jobs, progress)
    hit, enabled = coverage(refs, results, opts.profiles_extra)
    rule = load_tolerances(opts.tolerances).describe()
    return SuiteResult(results, hit, enabled, dataclasses.asdict(opts), rule, time.perf_counter() - start,
                       [shard_spec] if shard_spec else [])


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
    return merged

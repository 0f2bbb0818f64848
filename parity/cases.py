"""Where cases come from: case descriptors and the one place that turns them into cases.

A ``CaseRef`` names a case so that any process can rebuild the same one: the
K-th case of a profile's sweep, of a real cfg's sweep, or a recorded file.
``--jobs`` workers and ``--shard I/N`` CI jobs need nothing but the
descriptors. ``case_from_spec`` reads the ids users type ("yolov4#17",
"yolov4#5/head2", "my.cfg#0", a .npz path); ``suite_refs`` lists a suite;
``build_cases`` generates each sweep once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .case import Case, load_case
from .cfg import load_cfg
from .errors import ParityError
from .profiles import cfg_cases, load_profiles, profile_cases
from .replay import case_paths

__all__ = ["CaseRef", "build_case", "build_cases", "case_from_spec", "check_seed", "shard", "suite_refs"]

# Seeds are numpy SeedSequence entropy: non-negative; kept to 64 bits so every id stays short.
MAX_SEED = 2**63 - 1
# Samples per cfg when no count is given (``run --cfg`` without --cases).
DEFAULT_CFG_SAMPLES = 4


def check_seed(seed: int) -> int:
    """``seed`` if it lies in 0..MAX_SEED, else a ParityError."""
    if not 0 <= seed <= MAX_SEED:
        raise ParityError(f"--seed {seed}: must lie in 0..{MAX_SEED}")
    return seed

_ID = re.compile(r"^(?P<source>.+)#(?P<index>\d+)(?:/head(?P<head>\d+))?$")


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


def suite_refs(profiles: Sequence[str], cfgs: Sequence[str], files: Sequence[str], cases: int | None,
               seed: int, profiles_extra: Sequence[str] = ()) -> list[CaseRef]:
    """The descriptors of a suite, in a deterministic order.

    ``cases`` samples per profile or cfg (None: each profile's own count, 4 per cfg).
    """
    refs: list[CaseRef] = []
    check_seed(seed)
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
    if ref.kind == "profile":
        return profile_cases(load_profiles(profiles_extra)[ref.source], ref.count, ref.seed)
    if ref.kind == "cfg":
        return cfg_cases(ref.source, ref.count, ref.seed)
    raise ParityError(f"unknown case kind {ref.kind!r}")


def build_cases(refs: Sequence[CaseRef], profiles_extra: Sequence[str] = ()) -> Iterator[tuple[CaseRef, Case]]:
    """The cases ``refs`` name; each sweep is generated once, in one pass."""
    for ref, case, _ in build_samples(refs, profiles_extra):
        yield ref, case


def build_samples(refs: Sequence[CaseRef], profiles_extra: Sequence[str] = ()
                  ) -> Iterator[tuple[CaseRef, Case, list[Case]]]:
    """The cases ``refs`` name, each with its whole sample: all heads of its sample, in head order.

    Each sweep is generated once, in one pass, holding one sample at a time. A
    whole-network candidate needs every head of a sample even when a shard
    selects only some of them; the heads of a sample share one list object.
    """
    pending: dict[tuple[str, str, int, int], dict[int, CaseRef]] = {}
    for ref in refs:
        if ref.kind == "file":
            case = load_case(ref.source)
            yield ref, case, [case]
        else:
            pending.setdefault((ref.kind, ref.source, ref.seed, ref.count), {})[ref.index] = ref
    for wanted in pending.values():
        first = next(iter(wanted.values()))
        last = max(wanted)
        sample: list[Case] = []
        picks: list[tuple[CaseRef, Case]] = []
        key: object = None
        seen = 0
        for k, case in enumerate(_sweep(first, profiles_extra)):
            seen = k + 1
            if sample and case.meta.get("sample", k) != key:      # the previous sample is whole
                yield from ((r, c, sample) for r, c in picks)
                sample, picks = [], []
            key = case.meta.get("sample", k)
            sample.append(case)
            if k in wanted:
                picks.append((wanted[k], case))
            if k >= last and _last_head(case):
                break
        if seen <= last:
            raise ParityError(f"{first.source}: the sweep has fewer than {last + 1} cases")
        yield from ((r, c, sample) for r, c in picks)


def _last_head(case: Case) -> bool:
    """Whether ``case`` is the last head of its sample (the next case starts another sample)."""
    heads = case.meta.get("heads")
    return heads is None or int(case.meta.get("head", 0)) + 1 >= int(heads)


def build_case(ref: CaseRef, profiles_extra: Sequence[str] = ()) -> Case:
    """The one case a descriptor names."""
    return next(case for _, case in build_cases([ref], profiles_extra))


def case_from_spec(spec: str, seed: int = 0, profiles_extra: Sequence[str] = (), cases: int | None = None) -> Case:
    """The case a CASE argument names: a file, or a case id rebuilt with ``seed``.

    "NAME#K" is ``CaseRef(kind, NAME, K, seed)`` (what ``run`` reports);
    "NAME#S/headN" is head N of sample S (what ``case_id`` and recorded
    file names say). NAME is a profile or a cfg file. The sample must lie in
    the suite ``run --cases`` (``cases``, default: the profile's own count, 4
    per cfg) would run: a typo must not generate a million samples.
    """
    check_seed(seed)
    path = Path(spec)
    if path.is_file():
        return build_case(CaseRef("file", spec))
    if spec.endswith(".npz") or path.is_dir():
        raise ParityError(f"{spec}: no such case file" + (" (a folder; give one .npz file)" if path.is_dir() else ""))
    match = _ID.match(spec)
    if not match:
        raise ParityError(f"CASE {spec!r}: expected a case file (.npz) or a case id such as 'yolov4#3', "
                          "'yolov4#1/head2' or 'yolov4.cfg#0'")
    source, index = match["source"], int(match["index"])
    kind = _source_kind(source, profiles_extra)
    _check_in_suite(spec, kind, source, index if match["head"] is None else None,
                    index if match["head"] is not None else None, cases, profiles_extra)
    if match["head"] is None:
        return build_case(CaseRef(kind, source, index, seed, index + 1), tuple(profiles_extra))
    return _sample_head(kind, source, index, int(match["head"]), seed, profiles_extra)


def _check_in_suite(spec: str, kind: str, source: str, index: int | None, sample: int | None, cases: int | None,
                    profiles_extra: Sequence[str]) -> None:
    """ParityError naming the suite's size when the case id lies beyond it."""
    if kind == "profile":
        heads, count = len(load_profiles(profiles_extra)[source].heads), load_profiles(profiles_extra)[source].count
    else:
        heads, count = len(load_cfg(source).yolo_layers), DEFAULT_CFG_SAMPLES
    samples = cases if cases is not None else count
    total = samples * heads
    if (index is not None and index >= total) or (sample is not None and sample >= samples):
        raise ParityError(f"{spec}: the {source} suite has {total} cases (#0..#{total - 1}: {samples} samples x "
                          f"{heads} heads{'' if cases is not None else ', its default count'}); a case of a "
                          "larger run needs that run's --cases N")


def _source_kind(source: str, profiles_extra: Sequence[str]) -> str:
    known = load_profiles(profiles_extra)
    if source in known:
        return "profile"
    if Path(source).is_file():
        return "cfg"
    if source.endswith(".cfg"):
        raise ParityError(f"{source}: no such cfg file")
    raise ParityError(f"unknown profile {source!r}; known: {', '.join(known)} (or a path to a .cfg file)")


def _sample_head(kind: str, source: str, sample: int, head: int, seed: int, profiles_extra: Sequence[str]) -> Case:
    if kind == "profile":
        cases = profile_cases(load_profiles(profiles_extra)[source], sample + 1, seed)
    else:
        cases = cfg_cases(source, sample + 1, seed)
    heads = 0
    for case in cases:
        if case.meta.get("sample") == sample:
            heads += 1
            if case.meta.get("head") == head:
                return case
    raise ParityError(f"{source}#{sample}/head{head}: sample {sample} has {heads} head(s): head must lie in "
                      f"0..{heads - 1}")

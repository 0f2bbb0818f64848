"""Checking the search on known answers: random combinations of catalogue switches.

A combination is 1 to 5 deviations drawn from the executable catalogue (with
parameters: a threshold, a ratio limit, a reduction, a plain weight), each
one *observable*: taking it out changes the delta on the cases. Its variant's
delta is the candidate; the search must name exactly the combination, and
never a deviation outside it. ``tools/search_proof.py`` (``make
search-proof``) runs 200 of them; the tests run a few.
"""
from __future__ import annotations

import dataclasses
import random
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from ..case import Case
from ..cases import case_from_spec
from ..errors import DarknetInputWarning
from ..generate import CaseFeatures, CaseShape, random_case
from ..tolerance import Tolerance
from .catalogue import BY_ID, executable
from .runs import outside_mask
from .search import Explanation, SearchCase, search
from .trials import SIBLINGS, options_of, relevant
from .variant import Variant
from .variant_forward import variant_forward

__all__ = ["Combination", "dense_cases", "random_combination", "check_combination", "variant_cases"]

# Dense cases: many truths, shared cells, planted overlaps, several batch sizes (so a mean over the batch
# differs from a plain constant); no NaN/Inf and no malformed truth lists (those have their own entries).
DENSE = CaseFeatures(nonfinite=0.0, shared_cell=0.45, class_oob=0.0, mid_terminator=0.0, over_max=0.0,
                     empty_image=0.0, plant=0.9, plant_wild=0.3, anchor_sized=0.5)
# Parameter values drawn for fitted parameters (thresholds and limits porters use).
THRESHOLDS = (0.5, 0.6, 0.3)
RATIO_LIMITS = (4.0, 3.0)
WEIGHTS = (0.5, 2.0, 0.05, 5.0)
REDUCTIONS = ("batch", "slots", "positives", "positive_slots")


@lru_cache(maxsize=None)
def dense_cases(profile: str, count: int = 6, grid: int = 8) -> tuple[Case, ...]:
    """``count`` dense generated cases of ``profile``'s first head, batch sizes 1 to 3."""
    config = case_from_spec(f"{profile}#0").config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        return tuple(random_case(seed, config, shape=CaseShape(1 + seed % 3, grid, grid, 12), features=DENSE)
                     for seed in range(count))


@dataclass(frozen=True)
class Combination:
    """Deviation ids with the Variant fields they set."""

    members: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

    @property
    def ids(self) -> set[str]:
        return {m for m, _ in self.members}

    @property
    def variant(self) -> Variant:
        fields: dict[str, Any] = {}
        for _, switch in self.members:
            fields.update(dict(switch))
        return Variant(**fields)

    def without(self, member_id: str) -> "Combination":
        return Combination(tuple(m for m in self.members if m[0] != member_id))


def _atoms(config: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every (deviation, switch) a combination may draw, parameters included."""
    atoms: list[tuple[str, dict[str, Any]]] = []
    for dev in executable():
        if dev.family == "reduction":
            continue
        switch = dict(dev.switch or {})
        if dev.id == "ignore_threshold":
            options = [{"ignore_thresh": t} for t in THRESHOLDS if t != config.ignore_thresh]
        elif dev.id == "assign_ratio":
            options = [{**switch, "ratio_k": k} for k in RATIO_LIMITS]
        elif dev.id == "box_kind_other":
            options = [{"box_kind": k} for k in ("mse", "iou", "giou", "diou", "ciou") if k != config.iou_loss]
        elif dev.id in ("box_grad_exact", "box_grad_autograd") and config.iou_loss == "ciou":
            options = [{**switch, "ciou_alpha": a} for a in ("differentiated", "detached")]
        elif dev.id == "obj_target_iou":
            options = [{"obj_target": v} for v in ("iou", "iou_kind") if v == "iou" or config.iou_loss != "mse"]
        elif dev.id == "assign_every_above":
            options = [{**switch, "assign_t": t} for t in (0.2, 0.3, 0.5)]
        elif dev.id == "assign_cap":
            options = [{"assign_cap": c} for c in (2, 4, 8)]
        elif dev.id == "obj_focal":
            options = [{**switch, "focal_gamma": g, "focal_alpha": a} for g in (2.0, 1.5) for a in (0.25, None)]
        elif dev.id == "cls_label_smoothing":
            options = [{**switch, "cls_smooth_eps": e} for e in (0.1, 0.05)]
        else:
            options = [switch]
        atoms += [(dev.id, o) for o in options if relevant(dev, o, [config])]
    for term in ("box", "obj", "cls"):
        atoms += [(f"{term}_mean_over_{q}", {f"reduce_{term}": q}) for q in REDUCTIONS]
        atoms += [("term_weight", {f"weight_{term}": w}) for w in WEIGHTS
                  if not (term == "cls" and np.isclose(w * config.classes, 1.0))]
    return atoms


# Deviations that make another meaningless (the pair cannot be told apart from one of them alone).
EXCLUSIVE = ({"ignore_none", "ignore_threshold"}, {"ignore_none", "ignore_no_class_match"},
             {"assign_ratio", "assign_best_in_mask"}, {"assign_ratio", "assign_no_extras"})


def random_combination(rng: random.Random, config: Any, size: int) -> Combination:
    """``size`` compatible deviations drawn at random (distinct fields, no exclusive pair)."""
    atoms = _atoms(config)
    while True:
        picked: list[tuple[str, dict[str, Any]]] = []
        fields: set[str] = set()
        for dev_id, switch in rng.sample(atoms, len(atoms)):
            ids = {p[0] for p in picked}
            if dev_id in ids or set(switch) & fields or any({dev_id, o} <= pair for pair in EXCLUSIVE for o in ids):
                continue
            picked.append((dev_id, switch))
            fields |= set(switch)
            if len(picked) == size:
                return Combination(tuple((d, tuple(sorted(s.items()))) for d, s in picked))


def variant_cases(cases: Sequence[Case], variant: Variant) -> list[SearchCase]:
    """The variant's delta on each case, as a candidate for the search."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        for k, case in enumerate(cases):
            run = variant_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config, variant)
            out.append(SearchCase(f"case{k}", case, run.delta.numpy()))
    return out


def _deltas(cases: Sequence[Case], variant: Variant) -> list[np.ndarray]:
    return [c.candidate for c in variant_cases(cases, variant)]


def _same(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    """No element outside the rule, by the test the search counts with."""
    return not any(outside_mask(x, y, Tolerance()).any() for x, y in zip(a, b))


def observable(combination: Combination, cases: Sequence[Case]) -> bool:
    """The combination is the one answer the cases allow.

    Every member changes the delta (under the rule) when the others stay, and
    no member can be swapped for a sibling deviation (``search.SIBLINGS``)
    with the same delta on these cases: an ignore that only looks at
    assigned truths, on cases where no slot is then ignored, *is* no ignore.
    """
    full = _deltas(cases, combination.variant)
    if _same(full, _deltas(cases, Variant())):
        return False
    for member, switch in combination.members:
        rest = combination.without(member)
        if _same(full, _deltas(cases, rest.variant)):
            return False
        taken = set(rest.variant.changes())
        for sibling in set().union(*(g for g in SIBLINGS if member in g)) - {member}:
            for option in options_of(BY_ID[sibling]):
                if set(option) & taken:
                    continue
                swapped = Combination(rest.members + ((sibling, tuple(sorted(option.items()))),))
                if _same(full, _deltas(cases, swapped.variant)):
                    return False
    return True


@dataclass(frozen=True)
class Outcome:
    combination: Combination
    explanation: Explanation
    iou_loss: str = "ciou"          # the cases' cfg box loss

    @property
    def exact(self) -> bool:
        """The same deviations, the same decision-valued parameters, every element reproduced.

        Values that mean the same thing for the box loss in force are one
        decision: CIoU's alpha for another loss, the IoU-kind objectness target
        where the box loss is plain IoU or MSE.
        """
        found, true = self.explanation.variant, self.combination.variant
        decisions = [f.name for f in dataclasses.fields(Variant) if isinstance(getattr(true, f.name), str)]
        kind = self.iou_loss if true.box_kind == "cfg" else true.box_kind
        if kind != "ciou":
            decisions.remove("ciou_alpha")
        if kind in ("iou", "mse") and {found.obj_target, true.obj_target} == {"iou", "iou_kind"}:
            decisions.remove("obj_target")
        return (self.explanation.ids == self.combination.ids and self.explanation.exact
                and all(getattr(found, k) == getattr(true, k) for k in decisions))

    @property
    def false_names(self) -> set[str]:
        return self.explanation.ids - self.combination.ids


def check_combination(combination: Combination, cases: Sequence[Case]) -> Outcome:
    return Outcome(combination, search(variant_cases(cases, combination.variant)), cases[0].config.iou_loss)


def draw(rng: random.Random, profile: str, cases: Sequence[Case], max_size: int = 5) -> Combination:
    """An observable random combination of 1 to ``max_size`` deviations for ``profile``'s cases."""
    config = cases[0].config
    while True:
        combination = random_combination(rng, config, rng.randint(1, max_size))
        if observable(combination, cases):
            return combination

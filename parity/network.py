"""Whole-network candidates: one loss over every [yolo] head of a sample, checked head by head.

Real ports compute one loss over all heads: normalized across heads, with
per-head balance weights, sometimes assigning truths across layers. Such a
candidate is ``fn(inputs, truth, configs)``: ``inputs`` the list of head
tensors (each in the candidate's layout), ``truth`` darknet's
``[batch, rows, 6]`` shared by all heads, ``configs`` one ``YoloConfig`` per
head. It returns a scalar loss (autograd gives every head's gradient), or a
list with one delta or gradient per head. The harness runs it once per
sample and compares each head with darknet's [yolo] layer of that head, so
the diff, diagnosis and reports stay per head and per term.

A ``Sample`` is the cases of one sample (one per head, the same truth); the
suite groups cases into samples (``parity.cases.build_samples``) and asks
for each head's output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .candidates import (Candidate, CandidateOutput, detect_sign, fresh_input, fresh_truth, full_tensor,
                         no_process_exit, candidate_error, to_nchw)
from .case import Case
from .errors import CaseTimeout, Interrupted, ParityError


@dataclass
class Sample:
    """The heads of one sample, and (once run) a network candidate's output for each."""

    cases: list[Case]
    outputs: list[CandidateOutput] | None = None
    error: ParityError | None = None
    keys: list[int] = field(default_factory=list)

    def output_for(self, candidate: Candidate, case: Case) -> CandidateOutput:
        """The candidate's delta for ``case`` (one of this sample's heads), running it once for all."""
        if self.outputs is None and self.error is None:
            try:
                self.outputs = run_network(candidate, self.cases)
            except ParityError as exc:
                self.error = exc
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        for head, member in enumerate(self.cases):
            if member is case:
                return self.outputs[head]
        raise ParityError(f"{case.name}: not a head of this sample")


def run_network(candidate: Candidate, cases: list[Case]) -> list[CandidateOutput]:
    """Run a whole-network candidate on every head of one sample; one output per head, in order."""
    truth = cases[0].truth
    for case in cases[1:]:
        if case.truth.shape != truth.shape or not np.array_equal(case.truth, truth, equal_nan=True):
            raise ParityError(f"{case.name}: the heads of one sample must share their truth")
    heads = [fresh_input(candidate, case) for case in cases]
    configs = [case.config for case in cases]
    if candidate.convention in (None, "loss"):
        for h in heads:
            h.requires_grad_()
    try:
        with no_process_exit(candidate):
            result = candidate.fn(heads, fresh_truth(cases[0], candidate.device), configs)
    except (Interrupted, CaseTimeout):
        raise
    except BaseException as exc:   # never a pass: SystemExit, KeyboardInterrupt, ... included
        raise candidate_error(candidate, exc, "when called", heads[0]) from None
    if isinstance(result, torch.Tensor) and (result.dim() == 0 or result.numel() == 1):
        if candidate.convention not in (None, "loss"):
            raise ParityError(f"candidate {candidate.name!r} returned a scalar but declares convention "
                              f"{candidate.convention!r}")
        return _loss_outputs(candidate, result, heads, cases)
    if candidate.convention == "loss":
        raise ParityError(f"candidate {candidate.name!r}: convention 'loss' expects a scalar, got "
                          f"{type(result).__name__}")
    if not isinstance(result, (list, tuple)) or len(result) != len(cases):
        raise ParityError(f"candidate {candidate.name!r} (whole network) returned {type(result).__name__}; "
                          f"expected a scalar loss or a list of {len(cases)} per-head deltas/gradients")
    out = []
    for head, case, part in zip(heads, cases, result):
        full = full_tensor(candidate, part, head, case.config)
        convention = candidate.convention or detect_sign(candidate, full, case)
        delta = full if convention == "delta" else -full
        out.append(_output(delta, convention, candidate.convention is None))
    return out


def _loss_outputs(candidate: Candidate, loss: torch.Tensor, heads: list[torch.Tensor],
                  cases: list[Case]) -> list[CandidateOutput]:
    if not loss.requires_grad:
        raise ParityError(f"candidate {candidate.name!r} returned a loss that does not depend on the inputs")
    try:
        grads = torch.autograd.grad(loss.reshape(()), heads, allow_unused=True)
    except Exception as exc:
        raise candidate_error(candidate, exc, "in backward", heads[0]) from None
    out = []
    for grad, head, case in zip(grads, heads, cases):
        g = torch.zeros_like(head) if grad is None else grad      # a head the loss ignores: gradient 0
        delta = -to_nchw(g.detach().to("cpu", torch.float32), case.config, candidate.layout).contiguous()
        out.append(_output(delta, "loss", candidate.convention is None))
    return out


def _output(delta: torch.Tensor, convention: str, detected: bool) -> CandidateOutput:
    arr = np.array(delta.numpy(), dtype=np.float32, copy=True)
    return CandidateOutput(arr, convention, detected, int(np.count_nonzero(~np.isfinite(arr))))

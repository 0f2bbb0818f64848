"""Candidates that go wrong in each way the harness must report."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NOT_CALLABLE = 3


def _helper(x):
    raise ValueError("boom in port")  # the frame the error must name


def raises(input, truth, config):
    return _helper(input)


def raises_inside_torch(input, truth, config):
    return F.binary_cross_entropy_with_logits(input, truth)  # torch raises; this line is the one to name


def returns_none(input, truth, config):
    return None


def returns_tuple(input, truth, config):
    return (input.sum(), input.detach())


def wrong_shape(input, truth, config):
    return input.detach()[:, :1]


def nchw_shaped(input, truth, config):
    b, n, h, w, e = input.shape
    return torch.zeros(b, n * e, h, w)


def integer_delta(input, truth, config):
    return torch.zeros_like(input, dtype=torch.int32)


def detached_loss(input, truth, config):
    return (input.detach() ** 2).sum()


def unrelated_loss(input, truth, config):
    return torch.tensor(1.0, requires_grad=True) * 2


def all_zero(input, truth, config):
    return torch.zeros_like(input)


def inplace_on_input(input, truth, config):
    input.mul_(0)
    return input


class _Fails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.sum()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("backward exploded")


def failing_backward(input, truth, config):
    return _Fails.apply(input)


def nan_delta(input, truth, config):
    from parity.candidates import parity_delta

    delta = parity_delta(input, truth, config).clone()
    delta.view(-1)[:3] = float("nan")
    return delta

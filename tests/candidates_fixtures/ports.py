"""The project's own port wrapped in each convention: every one must give darknet's delta exactly."""
from __future__ import annotations

from torch import Tensor

from parity.candidates import parity_delta
from parity.config import YoloConfig
from parity.torch import DarknetYoloLoss


def as_delta(input: Tensor, truth: Tensor, config: YoloConfig) -> Tensor:
    return parity_delta(input, truth, config)


def as_grad(input: Tensor, truth: Tensor, config: YoloConfig) -> Tensor:
    return -parity_delta(input, truth, config)


def as_loss(input: Tensor, truth: Tensor, config: YoloConfig) -> Tensor:
    layout = "bnhwc" if input.dim() == 5 else "nchw"
    return DarknetYoloLoss(config, layout=layout)(input, truth)


class Port:
    """A dotted ``module:Class.method`` target."""

    @staticmethod
    def delta(input: Tensor, truth: Tensor, config: YoloConfig) -> Tensor:
        return parity_delta(input, truth, config)

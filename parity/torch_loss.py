"""``DarknetYoloLoss``: darknet's gradients through autograd.

darknet's [yolo] layer does not differentiate a loss: it writes ``delta``
(target minus prediction, on the activated output, without the logistic
derivative and without back-propagating ``scale_x_y`` or the box decoding)
and its backward adds that delta to the previous layer's. Gradients descend,
so the gradient darknet applies to the head is ``-delta``. The custom
autograd Function below returns darknet's reported cost as the value and
``-delta * grad_output`` as the gradient: the value is what darknet prints,
NOT an objective whose derivative is that gradient.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .cfg import load_cfg, parse_cfg
from .config import YoloConfig, backward_scale
from .errors import InputError
from .result import LayerStats
from .targets import targets_from_rows
from .torch_layer import yolo_forward


class _DarknetGradient(torch.autograd.Function):
    """Value: darknet's cost. Gradient w.r.t. the head: ``-delta * grad_output``."""

    @staticmethod
    def forward(head: Tensor, cost: Tensor, delta: Tensor) -> Tensor:  # type: ignore[override]
        return cost.to(head.dtype).clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        head, _, delta = inputs
        ctx.save_for_backward(delta)
        ctx.head_dtype = head.dtype

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_cost: Tensor) -> tuple[Tensor | None, None, None]:
        (delta,) = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            grad = (-delta * grad_cost.to(delta.dtype)).to(ctx.head_dtype)
        return grad, None, None


def darknet_yolo_cost(head: Tensor, truth: Tensor, config: YoloConfig, flavor: str | None = None, *,
                      backward: str = "cpu", loss_scale: float = 1.0,
                      running_cost: bool | None = None) -> tuple[Tensor, Tensor, LayerStats]:
    """One head: ``(cost, delta, stats)``; ``cost.backward()`` leaves ``head.grad == -delta``.

    ``backward``/``loss_scale``: which darknet backward ``delta`` stands for; ``running_cost``:
    how the cost is summed (both as in ``yolo_forward``).
    """
    with torch.no_grad():
        run = yolo_forward(head, truth, config, flavor or config.flavor, backward=backward, loss_scale=loss_scale,
                           running_cost=running_cost)
    return _DarknetGradient.apply(head, run.stats.cost, run.delta), run.delta, run.stats


def _configs_from(spec: Any, flavor: str | None) -> list[YoloConfig]:
    """A cfg path, cfg text, one YoloConfig or a sequence of them -> one config per head."""
    if isinstance(spec, YoloConfig):
        return [spec]
    if isinstance(spec, (str, os.PathLike)):
        text_like = isinstance(spec, str) and "\n" in spec
        net = parse_cfg(spec, flavor=flavor or "alexeyab") if text_like else load_cfg(spec, flavor=flavor or "alexeyab")
        configs = [layer.config for layer in net.yolo_layers]
        if not configs:
            raise InputError(f"{spec if not text_like else 'cfg text'}: no [yolo] section")
        return configs
    if isinstance(spec, Sequence) and spec and all(isinstance(c, YoloConfig) for c in spec):
        return list(spec)
    raise InputError(f"DarknetYoloLoss needs a cfg path, cfg text or YoloConfig(s), got {type(spec).__name__}")


class DarknetYoloLoss(nn.Module):
    """darknet's [yolo] training loss for one or several heads.

    ``loss = DarknetYoloLoss("yolov4.cfg")(outputs, targets)``; ``loss.backward()``
    leaves each head's ``.grad == -delta``, the gradient darknet applies. The
    returned value is the sum of the heads' darknet costs (what darknet
    prints), not the objective whose gradient is applied.

    Args:
        cfg_or_config: a darknet cfg file (each [yolo] section is one head, in
            order), cfg text, a ``YoloConfig``, or a list of them.
        flavor: ``"alexeyab"`` (default) or ``"pjreddie"``.
        layout: ``"nchw"`` (darknet's ``[b, n*(5+c), h, w]``) or ``"bnhwc"``
            (``[b, n, h, w, 5+c]``, common in PyTorch codebases).
        backward: which darknet backward the gradient reproduces. ``"cpu"``
            (the default: darknet's CPU semantics, ``backward_yolo_layer``,
            the delta as is) or ``"gpu"`` (``backward_yolo_layer_gpu``, how
            most people train: AlexeyAB scales each head's delta by
            ``loss_scale * delta_normalizer``; pjreddie does not scale).
        loss_scale: darknet's [net] ``loss_scale`` (default 1, as darknet's);
            used only by ``backward="gpu"``.
        running_cost: the value as darknet's float32 running sum also on a GPU
            (``True``: one more host sync per head), or the float64 sum
            (``False``); ``None`` (default): running on the CPU only. The
            gradient is the same either way.

    Forward takes one head tensor or a list (one per head, in cfg order) and
    targets as darknet truth ``[b, max_boxes, 6]`` or rows ``[N, 6]``
    ``(image_index, class, x, y, w, h)``. ``last_stats`` keeps each head's stats.
    """

    def __init__(self, cfg_or_config: Any, flavor: str | None = None, *, layout: str = "nchw",
                 backward: str = "cpu", loss_scale: float = 1.0, running_cost: bool | None = None) -> None:
        super().__init__()
        if layout not in ("nchw", "bnhwc"):
            raise InputError(f"layout {layout!r}: expected 'nchw' or 'bnhwc'")
        self.configs = _configs_from(cfg_or_config, flavor)
        self.flavor = flavor or self.configs[0].flavor
        self.layout = layout
        for config in self.configs:       # a bad choice fails here, not at the first batch
            backward_scale(config, self.flavor, backward, loss_scale)
        self.backward_mode = backward
        self.loss_scale = loss_scale
        self.running_cost = running_cost
        self.last_stats: list[LayerStats] = []

    def _to_nchw(self, head: Tensor, config: YoloConfig) -> Tensor:
        if self.layout == "nchw":
            return head
        if head.dim() != 5 or head.shape[1] != config.n or head.shape[4] != 5 + config.classes:
            raise InputError(f"head: shape {tuple(head.shape)}, expected [b, {config.n}, h, w, "
                             f"{5 + config.classes}] for layout 'bnhwc'")
        b, n, h, w, e = head.shape
        return head.permute(0, 1, 4, 2, 3).reshape(b, n * e, h, w)

    def forward(self, outputs: Tensor | Sequence[Tensor], targets: Tensor) -> Tensor:
        heads = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        if len(heads) != len(self.configs):
            raise InputError(f"{len(heads)} head outputs for {len(self.configs)} [yolo] layers")
        batch = heads[0].shape[0]
        total: Tensor | None = None
        self.last_stats = []
        for head, config in zip(heads, self.configs):
            truth = targets
            if targets.dim() == 2:
                truth = targets_from_rows(targets, batch, config.max_boxes)
            # the truth stays where it is: yolo_forward plans on a host copy of it anyway
            cost, _, stats = darknet_yolo_cost(self._to_nchw(head, config), truth, config, self.flavor,
                                               backward=self.backward_mode, loss_scale=self.loss_scale,
                                               running_cost=self.running_cost)
            self.last_stats.append(stats)
            total = cost if total is None else total + cost
        assert total is not None
        return total

"""``parity.torch``: darknet's [yolo] layer for PyTorch users.

    from parity.torch import yolo_forward, DarknetYoloLoss
    run = yolo_forward(input, truth, config, flavor="alexeyab")   # run.output, run.delta, run.stats, ...
    loss = DarknetYoloLoss("yolov4.cfg")(head_outputs, targets); loss.backward()

See ``parity.torch_layer`` (the forward pass) and ``parity.torch_loss``
(the autograd Function, multi-head module and target converters).
"""
from __future__ import annotations

from .torch_layer import logistic, yolo_forward
from .targets import (read_rows, rows_from_targets, targets_from_rows, truth_from_lists,  # noqa: F401
                      truth_from_rows)
from .torch_loss import DarknetYoloLoss, darknet_yolo_cost

__all__ = ["DarknetYoloLoss", "darknet_yolo_cost", "logistic", "read_rows", "rows_from_targets", "targets_from_rows",
           "truth_from_lists", "truth_from_rows",
           "yolo_forward"]

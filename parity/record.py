"""``Recorder``: format-v1 cases from a user's own PyTorch training loop.

A port of darknet's [yolo] loss is best checked on the tensors it really
sees. ``Recorder`` takes the head tensors of a training step (through forward
hooks on the head modules, or handed over explicitly) and the step's targets,
and writes one format-v1 case per head every ``every`` steps::

    from parity.record import Recorder

    with Recorder(heads=[model.head1, model.head2, model.head3], cfg="yolov4.cfg",
                  out="recordings/", every=100, max_bytes=200_000_000, model=model) as recorder:
        for images, targets in loader:          # targets: [N, 6] rows or darknet truth [b, max, 6]
            outputs = model(images)
            loss = my_loss(outputs, targets)
            recorder.step(targets)              # once per step, after the forward pass
            ...

    # later:  darknet-parity replay recordings/ --candidate mypkg.yolo:loss --convention loss

A case holds the cfg text ([net] plus that head's [yolo] section), the head
tensor (detached, CPU float32, darknet's NCHW ``[b, n*(5+c), h, w]``), the
truth ``[b, max_boxes, 6]`` and provenance in ``meta``. It holds no
``output``/``delta``: the reference computes them when the case is replayed
(``darknet-parity replay`` compares the candidate with the C reference's
delta on exactly these tensors).

Files are ``step{K:08d}_head{H}.npz`` under ``out``. Writing stops for good,
with one ``RecorderWarning``, at the first file that would take the bytes
this recorder has written past ``max_bytes``; a file is serialized in memory
first, so no file is ever written beyond the cap.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__
from .atomic import check_writable, write_atomic
from .case import Case, case_bytes
from .cfg import dump_yolo_cfg, load_cfg, parse_cfg, yolo_config_from_cfg
from .config import YoloConfig
from .errors import InputError, ParityError
from .layer_input import check_layer_input
from .targets import targets_from_rows

IMPLEMENTATION = "user PyTorch model (parity.record.Recorder)"
LAYOUTS = ("nchw", "bnhwc")


class RecorderWarning(UserWarning):
    """The recorder stopped writing (disk cap) or met something worth a note."""


@dataclass(frozen=True)
class _Head:
    """One [yolo] layer the recorder writes cases for."""

    config: YoloConfig
    options: tuple[tuple[str, str], ...] | None   # the cfg's [yolo] lines (key, value), None for a YoloConfig
    source: str | None                            # "file.cfg line N" where the layer came from
    grid: tuple[int, int] | None                  # (h, w) the cfg's layer walk gives, where known


def _heads_from(cfg: Any, flavor: str | None) -> list[_Head]:
    """A cfg path, cfg text, a YoloConfig or a sequence of them -> one ``_Head`` per [yolo] layer."""
    if isinstance(cfg, YoloConfig):
        cfg = [cfg]
    if isinstance(cfg, (str, os.PathLike)):
        text_like = isinstance(cfg, str) and "\n" in cfg
        kind = flavor or "alexeyab"
        net = parse_cfg(cfg, flavor=kind) if text_like else load_cfg(cfg, flavor=kind)
        name = "cfg text" if text_like else os.fspath(cfg)
        heads = []
        for layer in net.yolo_layers:
            section = net.sections[layer.index + 1]
            grid = (layer.grid_h, layer.grid_w) if layer.grid_h is not None else None
            heads.append(_Head(layer.config, tuple((o.key, o.value) for o in section.options),
                               f"{name} line {layer.line}", grid))
        if not heads:
            raise InputError(f"{name}: no [yolo] section")
        return heads
    if isinstance(cfg, Sequence) and cfg and all(isinstance(c, YoloConfig) for c in cfg):
        if flavor is not None and any(c.flavor != flavor for c in cfg):
            raise InputError(f"flavor={flavor!r} differs from the YoloConfig's own flavor")
        return [_Head(c, None, None, None) for c in cfg]
    raise InputError(f"Recorder needs cfg= a cfg path, cfg text or YoloConfig(s), got {type(cfg).__name__}")


class Recorder:
    """Writes format-v1 cases from a training loop: one per head, every ``every`` steps.

    Args:
        heads: the module(s) whose forward output is a head tensor: a list of
            modules, one per [yolo] layer in cfg order, or one module that
            returns a list/tuple of head tensors (or a single tensor). Forward
            hooks are attached; ``step(targets)`` then records what they saw.
            Leave it out to hand the tensors over with ``record()``.
        cfg: a darknet cfg file or cfg text (each [yolo] section is one head,
            in order), or a ``YoloConfig`` / a list of them.
        out: folder the ``.npz`` files go to (created on the first write).
        every: record steps 0, every, 2*every, ... (step numbers count
            ``step()``/``record()`` calls from 0 unless given explicitly).
        max_bytes: cap on the bytes this recorder writes (None: no cap).
        flavor: ``"alexeyab"`` (default) or ``"pjreddie"``, for parsing ``cfg``.
        layout: ``"nchw"`` (darknet's ``[b, n*(5+c), h, w]``) or ``"bnhwc"``
            (``[b, n, h, w, 5+c]``, converted to NCHW when written).
        convert_targets: ``fn(targets) -> truth`` for targets in a layout of
            your own; it returns darknet truth ``[b, max, 6]`` or ``[N, 6]``
            rows ``(image, class, x, y, w, h)``.
        seed: written into each case's meta (the seed of your run, if any).
        model: the model (or a name); its class name goes into meta.
        overwrite: write into a folder that already holds ``.npz`` files
            (refused otherwise, so that no recording is replaced by accident).

    Only forward passes run with gradients enabled are captured, so a
    validation pass under ``torch.no_grad()`` does not replace the training
    step's heads; the last such pass before ``step()`` is the one recorded.
    A head whose shape does not match its [yolo] layer, or truths darknet
    would refuse (a centre outside [0, 1)), raise ``InputError`` naming the
    step and the head.
    """

    def __init__(self, heads: nn.Module | Sequence[nn.Module] | None = None, *, cfg: Any, out: str | os.PathLike,
                 every: int = 1, max_bytes: int | None = None, flavor: str | None = None, layout: str = "nchw",
                 convert_targets: Callable[[Any], Any] | None = None, seed: int | None = None,
                 model: Any = None, overwrite: bool = False) -> None:
        if layout not in LAYOUTS:
            raise InputError(f"layout {layout!r}: expected 'nchw' or 'bnhwc'")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(f"every={every!r}: expected an integer >= 1")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                      or max_bytes < 1):
            raise InputError(f"max_bytes={max_bytes!r}: expected a positive integer or None")
        if convert_targets is not None and not callable(convert_targets):
            raise InputError("convert_targets must be callable: fn(targets) -> truth [b, max, 6] or rows [N, 6]")
        self.heads = _heads_from(cfg, flavor)
        self.flavor = self.heads[0].config.flavor
        self.out = Path(out)
        self._check_out(overwrite)
        self.every = every
        self.max_bytes = max_bytes
        self.layout = layout
        self.convert_targets = convert_targets
        self.seed = seed
        self.model_name = None if model is None else (model if isinstance(model, str) else type(model).__name__)
        self.bytes_written = 0
        self.written: list[Path] = []
        self.stopped = False            # the byte cap was reached or the disk refused: nothing more is written
        self.closed = False
        self._next_step = 0
        self._grid_warned: set[int] = set()
        self._hooks: list[Any] = []
        self._captured: dict[int, Tensor] = {}
        self._attached = False
        if heads is not None:
            self._attach(heads)

    # --- hooks -----------------------------------------------------------------------------------

    def _attach(self, heads: nn.Module | Sequence[nn.Module]) -> None:
        if isinstance(heads, nn.Module):
            self._attached = True
            self._hooks.append(heads.register_forward_hook(self._hook_all))
            return
        modules = list(heads)
        if not all(isinstance(m, nn.Module) for m in modules):
            raise InputError("heads: expected torch.nn.Module(s) (one per [yolo] layer, or one returning them all)")
        if len(modules) != len(self.heads):
            raise InputError(f"heads: {len(modules)} modules for {len(self.heads)} [yolo] layers in the cfg "
                             "(one head module per [yolo] section, in order)")
        self._attached = True
        for index, module in enumerate(modules):
            self._hooks.append(module.register_forward_hook(self._hook_one(index)))

    def _hook_one(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if torch.is_grad_enabled() and not self.closed:
                if not isinstance(output, Tensor):
                    raise InputError(f"head {index}: the hooked {type(module).__name__} returned "
                                     f"{type(output).__name__}, not a tensor; hook the module that outputs the "
                                     "head tensor, or call record() with the tensors")
                self._captured[index] = output.detach()
        return hook

    def _hook_all(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled() or self.closed:
            return
        outputs = [output] if isinstance(output, Tensor) else output
        if not isinstance(outputs, (list, tuple)) or not all(isinstance(t, Tensor) for t in outputs):
            raise InputError(f"heads: the hooked {type(module).__name__} returned {type(output).__name__}; "
                             "expected a tensor or a list/tuple of head tensors")
        if len(outputs) != len(self.heads):
            raise InputError(f"heads: the hooked {type(module).__name__} returned {len(outputs)} head tensors "
                             f"for {len(self.heads)} [yolo] layers in the cfg")
        self._captured = {index: tensor.detach() for index, tensor in enumerate(outputs)}

    # --- the training-loop calls -----------------------------------------------------------------

    def step(self, targets: Any, *, step: int | None = None) -> list[Path]:
        """Record the heads the hooks captured in this step's forward pass (if the step is due).

        Call once per training step, after the forward pass. Returns the files
        written (empty when the step is not due or the cap was reached).
        """
        self._check_open("step")
        if not self._attached:
            raise ParityError("step() needs heads= (modules to hook); without hooks call record(head_outputs, targets)")
        captured, self._captured = self._captured, {}
        if self.stopped:
            self._advance(step)
            return []
        missing = [i for i in range(len(self.heads)) if i not in captured]
        if missing:
            raise ParityError(f"step(): no forward output of head {missing[0]} was captured since the last step "
                              "(call step() after the training forward pass, with gradients enabled)")
        return self._record([captured[i] for i in range(len(self.heads))], targets, step)

    def record(self, head_outputs: Tensor | Sequence[Tensor], targets: Any, *, step: int | None = None) -> list[Path]:
        """Record the given head tensors (one per [yolo] layer, in cfg order) for this step, if due.

        The explicit form of ``step()``: call it once per training step;
        every-N and the byte cap apply the same way. Returns the files written.
        """
        self._check_open("record")
        outputs = [head_outputs] if isinstance(head_outputs, Tensor) else list(head_outputs)
        if not all(isinstance(t, Tensor) for t in outputs):
            raise InputError("head_outputs: expected a tensor or a list of tensors, one per [yolo] layer")
        if len(outputs) != len(self.heads):
            raise InputError(f"{len(outputs)} head outputs for {len(self.heads)} [yolo] layers in the cfg "
                             "(one per [yolo] section, in order)")
        return self._record(outputs, targets, step)

    def _advance(self, step: int | None) -> int:
        """This call's step number (the counter, or ``step`` given explicitly); moves the counter on."""
        if step is None:
            step = self._next_step
        elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InputError(f"step={step!r}: expected an integer >= 0")
        self._next_step = step + 1
        return step

    def _record(self, outputs: list[Tensor], targets: Any, step: int | None) -> list[Path]:
        step = self._advance(step)
        if step % self.every or self.stopped:
            return []
        inputs = [self._head_nchw(h, t) for h, t in enumerate(outputs)]   # every head checked before writing
        if self.convert_targets is not None:
            targets = self.convert_targets(targets)
        truths = [self._truth(targets, h, inputs[h].shape[0]) for h in range(len(self.heads))]
        cases = [self._case(step, h, x, t) for h, (x, t) in enumerate(zip(inputs, truths))]
        written = []
        for h, case in enumerate(cases):
            path = self.out / f"step{step:08d}_head{h}.npz"
            data = case_bytes(case)
            if self.max_bytes is not None and self.bytes_written + len(data) > self.max_bytes:
                self.stopped = True
                warnings.warn(f"Recorder: stopped writing at step {step}, head {h}: {path.name} "
                              f"({len(data):,} bytes) would take the {self.bytes_written:,} bytes written "
                              f"to {self.out} past max_bytes={self.max_bytes:,}; no further cases are recorded",
                              RecorderWarning, stacklevel=3)
                self._release()
                break
            if not self._write(path, data):
                break
            written.append(path)
        return written

    # --- conversions -----------------------------------------------------------------------------

    def _head_nchw(self, index: int, tensor: Tensor) -> np.ndarray:
        config = self.heads[index].config
        t = tensor.detach()
        where = f"head {index}" + (f" ([yolo] at {self.heads[index].source})" if self.heads[index].source else "")
        if self.layout == "bnhwc":
            expected = f"[b, {config.n}, h, w, {5 + config.classes}] (layout 'bnhwc': n={config.n} anchors, " \
                       f"5+classes={5 + config.classes})"
            if t.dim() != 5 or t.shape[1] != config.n or t.shape[4] != 5 + config.classes:
                raise InputError(f"{where}: shape {tuple(t.shape)}, expected {expected}")
            b, n, h, w, e = t.shape
            t = t.permute(0, 1, 4, 2, 3).reshape(b, n * e, h, w)
        else:
            expected = (f"[b, {config.channels}, h, w] (n*(5+classes) = {config.n}*(5+{config.classes}) channels, "
                        "darknet's layout)")
            if t.dim() != 4 or t.shape[1] != config.channels:
                raise InputError(f"{where}: shape {tuple(t.shape)}, expected {expected}")
        if not t.is_floating_point():
            raise InputError(f"{where}: dtype {t.dtype} is not floating point")
        if t.shape[0] < 1 or t.shape[2] < 1 or t.shape[3] < 1:
            raise InputError(f"{where}: shape {tuple(t.shape)} has an empty batch or grid")
        grid = self.heads[index].grid
        if grid is not None and tuple(t.shape[2:]) != grid and index not in self._grid_warned:
            self._grid_warned.add(index)
            warnings.warn(f"Recorder: {where}: grid {t.shape[2]}x{t.shape[3]} (h x w) differs from the cfg's "
                          f"{grid[0]}x{grid[1]} for this layer; the cases keep the cfg's width={config.net_w} and "
                          f"height={config.net_h} (anchors and truths are relative to them)",
                          RecorderWarning, stacklevel=4)
        return np.ascontiguousarray(t.to(device="cpu", dtype=torch.float32).numpy())

    def _truth(self, targets: Any, index: int, batch: int) -> np.ndarray:
        """Darknet truth [batch, max, 6] float32 for head ``index``."""
        config = self.heads[index].config
        try:
            t = targets.detach() if isinstance(targets, Tensor) else torch.as_tensor(np.asarray(targets))
        except (TypeError, ValueError) as exc:
            raise InputError(f"targets: not a tensor or array ({type(targets).__name__}): {exc}") from None
        if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                     torch.uint8)):
            raise InputError(f"targets: dtype {t.dtype} is not numeric")
        t = t.to("cpu")
        if t.dim() == 2 and t.shape[1] == 6:
            return targets_from_rows(t.to(torch.float32), batch, config.max_boxes).numpy()
        if t.dim() == 3 and t.shape[2] in (5, 6):
            if t.shape[0] != batch:
                raise InputError(f"targets: truth batch {t.shape[0]} does not match head {index}'s batch {batch}")
            truth = t.to(torch.float32).numpy()
            if truth.shape[2] == 5:     # pjreddie-style rows without a track id
                truth = np.concatenate([truth, np.zeros(truth.shape[:2] + (1,), np.float32)], axis=2)
            return np.ascontiguousarray(truth)
        raise InputError(f"targets: shape {tuple(t.shape)}, expected darknet truth [b, max_boxes, 6] "
                         "(x, y, w, h, class, track) or [N, 6] rows (image, class, x, y, w, h); "
                         "pass convert_targets= for another layout")

    def _cfg_text(self, index: int, batch: int) -> str:
        """[net] + this head's [yolo] section, parsing back to its config (with the recorded batch)."""
        head = self.heads[index]
        config = head.config.replace(batch=batch)
        if head.options is not None:
            lines = [f"# recorded by parity.record.Recorder: head {index}, the yolo section at {head.source}", "[net]",
                     f"width={config.net_w}", f"height={config.net_h}", f"batch={batch}", "", "[yolo]"]
            lines += [f"{key}={value}" for key, value in head.options]
            text = "\n".join(lines) + "\n"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    if yolo_config_from_cfg(text, flavor=config.flavor) == config:
                        return text
                except ParityError:
                    pass
        return dump_yolo_cfg(config)

    def _case(self, step: int, index: int, x: np.ndarray, truth: np.ndarray) -> Case:
        config = self.heads[index].config.replace(batch=int(x.shape[0]))
        try:
            check_layer_input(config, x, truth, config.flavor)
        except InputError as exc:
            raise InputError(f"step {step}, head {index}: {exc}") from None
        meta = {
            "implementation": IMPLEMENTATION,
            "flavor": config.flavor,
            "generator": f"training step {step}, head {index}",
            "step": step,
            "head": index,
            "model": self.model_name,
            "layout": self.layout,
            "cfg_source": self.heads[index].source,
            "recorded_by": "parity.record.Recorder",
            "parity_version": __version__,
        }
        if self.seed is not None:
            meta["seed"] = self.seed
        return Case(self._cfg_text(index, int(x.shape[0])), config, config.flavor, x, truth, meta=meta)

    def _check_out(self, overwrite: bool) -> None:
        """``out`` can take the files, and replaces no recording unless ``overwrite``: checked now, not at
        the first write hours into training."""
        out = os.fspath(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"out={out!r} exists and is not a folder")
        why = check_writable(self.out / "step00000000_head0.npz", "out=")
        if why:
            raise InputError(why)
        if self.out.is_dir() and not overwrite:
            held = sorted(self.out.glob("*.npz"))
            if held:
                raise InputError(f"out={out!r} already holds {len(held)} recording(s) (e.g. {held[0].name}); "
                                 "choose an empty folder, or pass overwrite=True")

    def _write(self, path: Path, data: bytes) -> bool:
        """Write one file whole (temporary name, then rename); False, once warned, if the disk refused.

        A full disk or lost permissions stop the recorder for good instead of
        raising into the training loop; no partial file is left behind.
        """
        try:
            write_atomic(path, data)
        except OSError as exc:
            self.stopped = True
            warnings.warn(f"Recorder: stopped writing at {path}: {exc.strerror or exc}; no further cases are "
                          f"recorded ({len(self.written)} file(s) written before)", RecorderWarning, stacklevel=4)
            self._release()
            return False
        self.bytes_written += len(data)
        self.written.append(path)
        return True

    # --- life cycle ------------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise ParityError(f"Recorder.{what}(): the recorder is closed")

    def _release(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._captured = {}

    def close(self) -> None:
        """Remove the hooks; later ``step()``/``record()`` calls raise. Safe to call twice."""
        if not self.closed:
            self._release()
            self._hooks = []
            self.closed = True

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("stopped" if self.stopped else "recording")
        return (f"Recorder({len(self.heads)} heads, every={self.every}, out={os.fspath(self.out)!r}, "
                f"{len(self.written)} files, {self.bytes_written:,} bytes, {state})")

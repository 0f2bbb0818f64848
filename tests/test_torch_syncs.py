"""Host syncs of the PyTorch port's device path (issue 13: at most 5 per three-head call).

On a GPU every ``.item()``, ``nonzero``, boolean-mask index or host copy
stalls the stream. The port's passes take the sync-free path off the CPU
(``_host_paths``); here that path is forced on the CPU, where (a) it must give
the same output, delta, roles, stats and decisions as the CPU path (the cost
excepted: off the CPU it is by default the exact float64 sum, not darknet's
float32 running sum, which ``running_cost=True`` gives at the price of a host
copy) and (b) the passes must call nothing that would sync: counted by
wrapping the calls that do. On a CUDA machine the sync count of a real
three-head call is read from ``torch.cuda.set_sync_debug_mode``.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import parity.torch_layer as port
from parity.cfg import parse_cfg
from parity.generate import CaseShape, random_case, random_config
from parity.torch import yolo_forward

ROOT = Path(__file__).resolve().parent.parent
PASSES = {"_activate", "_cell_pass", "_truth_pass", "_averaging_pass", "_cost", "_ignore_search"}
SYNCING = [(torch.Tensor, name) for name in ("item", "tolist", "numpy", "nonzero", "__bool__", "__int__",
                                              "__float__", "cpu", "masked_select")] + [(torch, "nonzero")]


@contextmanager
def counting_syncs():
    """Calls that sync a GPU, made (directly or not) from one of the port's passes."""
    calls: list[str] = []

    def wrap(owner, name, fn):
        def counted(*args, **kwargs):
            if any(f.function in PASSES for f in inspect.stack(0)[1:12]):
                calls.append(name)
            return fn(*args, **kwargs)
        return counted

    def wrap_index(fn, name):
        def counted(self, index, *rest):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts) \
                    and any(f.function in PASSES for f in inspect.stack(0)[1:12]):
                calls.append(f"{name} with a boolean mask")
            return fn(self, index, *rest)
        return counted

    saved = [(owner, name, getattr(owner, name)) for owner, name in SYNCING]
    saved += [(torch.Tensor, n, getattr(torch.Tensor, n)) for n in ("__getitem__", "__setitem__")]
    try:
        for owner, name, fn in saved[:len(SYNCING)]:
            setattr(owner, name, wrap(owner, name, fn))
        for owner, name, fn in saved[len(SYNCING):]:
            setattr(owner, name, wrap_index(fn, name))
        yield calls
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _cases():
    cases = []
    for k in range(24):
        flavor = "pjreddie" if k % 4 == 0 else "alexeyab"
        config = random_config(np.random.default_rng([13, k]), flavor)
        if k % 3 == 0:      # the truth_thresh path (and for AlexeyAB the iou_thresh extras) exercised
            extra = {"iou_thresh": 0.3} if flavor == "alexeyab" else {}
            config = dataclasses.replace(config, truth_thresh=0.6, **extra)
        cases.append(random_case(1300 + k, config, flavor=flavor, nonfinite=2 if k % 5 == 0 else 0))
    return cases


def _same(a, b) -> bool:
    a = a.cpu() if isinstance(a, torch.Tensor) else a
    b = b.cpu() if isinstance(b, torch.Tensor) else b
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    return a == b


def _compare(host, dev) -> list[str]:
    bad = [k for k in ("output", "delta", "roles") if not _same(getattr(host, k), getattr(dev, k))]
    for f in dataclasses.fields(host.decisions):
        x, y = getattr(host.decisions, f.name), getattr(dev.decisions, f.name)
        if f.name == "assignments":
            bad += [f"asg.{g.name}" for g in dataclasses.fields(x) if not _same(getattr(x, g.name), getattr(y, g.name))]
        elif (x is None) != (y is None) or (x is not None and not _same(x, y)):
            bad.append(f.name)
    hs, ds = host.stats.host(), dev.stats.host()
    for f in dataclasses.fields(hs):
        if f.name not in ("cost", "class_loss", "iou_loss", "total_loss") \
                and repr(getattr(hs, f.name)) != repr(getattr(ds, f.name)):   # NaN equals NaN here
            bad.append(f"stats.{f.name}")
    return bad


def _map_cases() -> list:
    """Recorded map= cases (class remapping): the device path must apply the map as the host path does."""
    from parity.replay import shared_recorded_dir

    root = shared_recorded_dir()
    folder = root / "alexeyab-extra-O2" if root else None
    return sorted(folder.glob("map_*.npz")) if folder and folder.is_dir() else []


@pytest.mark.parametrize("k", range(24 + len(_map_cases())))
def test_device_path_on_the_cpu_equals_the_host_path_and_never_syncs(k, monkeypatch):
    from parity.case import load_case

    case = _cases()[k] if k < 24 else load_case(_map_cases()[k - 24])
    x, t = torch.from_numpy(case.input), torch.from_numpy(case.truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = yolo_forward(x, t, case.config, case.flavor)
        monkeypatch.setattr(port, "_host_paths", lambda tensor: False)
        with counting_syncs() as calls:
            dev = yolo_forward(x, t, case.config, case.flavor, running_cost=False)   # as on a GPU
    assert calls == [], f"syncing calls in the passes: {calls}"
    assert _compare(host, dev) == []
    assert np.isclose(float(dev.stats.cost), float(host.stats.cost), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("k", range(0, 24, 2))
def test_truths_left_out_of_small_ignore_chunks_change_nothing(k, monkeypatch):
    """The host path's ignore search leaves out truths that cannot overlap a chunk; with chunks of
    two predictions (most truths left out, NaN edges included) it must equal the device path's,
    which searches every truth."""
    case = _cases()[k]
    x, t = torch.from_numpy(case.input), torch.from_numpy(case.truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(port, "PRUNED_CHUNK_SLOTS", 2 * case.input.shape[0])
        pruned = yolo_forward(x, t, case.config, case.flavor)
        monkeypatch.setattr(port, "_host_paths", lambda tensor: False)
        full = yolo_forward(x, t, case.config, case.flavor)
    assert _compare(pruned, full) == []


def _loss_figures(run) -> list[str]:
    s = run.stats.host()
    return [repr(getattr(s, k)) for k in ("cost", "total_loss", "class_loss", "iou_loss")]


@pytest.mark.parametrize("k", range(0, 24, 2))
def test_running_cost_on_the_device_path_is_darknets_sum_bit_for_bit(k, monkeypatch):
    """``running_cost=True`` off the CPU: the same float32 running sum as the host path, every figure."""
    case = _cases()[k]
    x, t = torch.from_numpy(case.input), torch.from_numpy(case.truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = yolo_forward(x, t, case.config, case.flavor)
        monkeypatch.setattr(port, "_host_paths", lambda tensor: False)
        running = yolo_forward(x, t, case.config, case.flavor, running_cost=True)
        float64 = yolo_forward(x, t, case.config, case.flavor, running_cost=False)
    assert _loss_figures(running) == _loss_figures(host)
    assert _compare(host, running) == []
    assert np.isclose(float(float64.stats.cost), float(host.stats.cost), rtol=1e-3, atol=1e-6)


def test_the_counter_sees_a_sync():
    """The wrapper must count what it claims to: a nonzero inside a pass."""
    def _cell_pass():
        return torch.ones(3).nonzero(), torch.ones(2)[torch.tensor([True, False])]
    with counting_syncs() as calls:
        _cell_pass()
    assert calls == ["nonzero", "__getitem__ with a boolean mask"]


def _yolov4_heads(batch: int = 8, truths: int = 50):
    text = (ROOT / "fixtures" / "cfg" / "yolov4.cfg").read_text()
    text = re.sub(r"(?m)^\s*(width|height)\s*=.*$", lambda m: f"{m.group(1)}=608", text)
    heads = []
    for k, layer in enumerate(parse_cfg(text).yolo_layers):
        case = random_case(k, layer.config, shape=CaseShape(batch, layer.grid_h, layer.grid_w, 0))
        rng = np.random.default_rng(k)
        truth = np.zeros((batch, layer.config.max_boxes, 6), np.float32)
        truth[:, :truths, 0:2] = rng.uniform(0.01, 0.99, (batch, truths, 2))
        truth[:, :truths, 2:4] = rng.uniform(0.02, 0.6, (batch, truths, 2))
        truth[:, :truths, 4] = rng.integers(0, layer.config.classes, (batch, truths))
        heads.append((layer.config, case.input, truth))
    return heads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_three_head_call_syncs_at_most_five_times_on_cuda():
    heads = [(c, torch.from_numpy(x).cuda(), torch.from_numpy(t).cuda()) for c, x, t in _yolov4_heads()]
    for c, x, t in heads:       # warm-up (allocator, kernels)
        yolo_forward(x, t, c)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for c, x, t in heads:
                yolo_forward(x, t, c)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 5, "\n".join(str(w.message) for w in syncs[:10])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_running_cost_on_cuda_is_the_cpu_cost_bit_for_bit():
    """The exact-sum option on a GPU: darknet's running sum, as the CPU path computes it."""
    for c, x, t in _yolov4_heads(batch=2):
        cpu = yolo_forward(torch.from_numpy(x), torch.from_numpy(t), c)
        gpu = yolo_forward(torch.from_numpy(x).cuda(), torch.from_numpy(t), c, running_cost=True)
        assert _loss_figures(gpu) == _loss_figures(cpu)

"""One checkout's implementations behind a line protocol, for side-by-side runs.

Run as ``PYTHONPATH=<checkout> python benchmarks/worker.py CASES.npz`` (this
file is copied next to the cases, so an old checkout is driven by today's
protocol). ``CASES.npz`` holds ``input_K``, ``truth_K`` and a JSON list of
config field dicts (``configs``); configs are rebuilt from the fields the
checkout's ``YoloConfig`` knows, so every checkout gets the same inputs.

Commands, one per line on stdin, one JSON line back on stdout:

* ``time IMPL THREADS`` -> ``{"seconds": s}``: one pass over every case with
  ``IMPL`` = ``c`` (the C reference) or ``torch`` / ``cuda`` (the port), or
  ``cuda-running-cost`` (the port on CUDA with ``running_cost=True``); a checkout
  without an implementation answers ``{"missing": why}``;
* ``memory IMPL THREADS`` -> ``{"peak_extra_mib": m}``: peak memory growth of one pass;
* ``ops`` -> ``{"ops": k}``: operations the port's device path (the sync-free
  path a GPU takes, forced on the CPU) dispatches in one pass, views and the
  host-side planning left out:
  about one kernel launch each on a GPU, so a launch-bound call's cost;
* ``digest`` -> ``{"digests": [...]}``: sha256 of each case's port output,
  delta, roles, stats and decisions (bit-identity across checkouts);
* ``quit``.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import inspect
import json
import sys
import time
import warnings

import numpy as np
import torch

from parity.config import YoloConfig
from parity.reference import run_reference
from parity.torch import yolo_forward


def load(path: str) -> list[tuple[YoloConfig, np.ndarray, np.ndarray]]:
    known = {f.name for f in dataclasses.fields(YoloConfig)}
    with np.load(path) as data:
        fields = json.loads(str(data["configs"][()]))
        cases = []
        for k, spec in enumerate(fields):
            spec = {key: tuple(v) if isinstance(v, list) else v for key, v in spec.items() if key in known}
            cases.append((YoloConfig(**spec), data[f"input_{k}"], data[f"truth_{k}"]))
    return cases


class Missing(Exception):
    """This checkout has no such implementation (an option added since)."""


def _runner(impl: str, cases):
    if impl == "c":
        return lambda: [run_reference(c, x, t) for c, x, t in cases], lambda: None
    if impl not in ("torch", "cuda", "cuda-running-cost"):
        raise Missing(f"unknown implementation {impl!r}")
    dev = "cpu" if impl == "torch" else "cuda"
    options = {"running_cost": True} if impl == "cuda-running-cost" else {}
    if any(name not in inspect.signature(yolo_forward).parameters for name in options):
        raise Missing(f"yolo_forward here has no {', '.join(options)}")
    tensors = [(c, torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev)) for c, x, t in cases]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return lambda: [yolo_forward(x, t, c, **options) for c, x, t in tensors], sync


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def peak_extra_mib(impl: str, run, sync) -> float:
    """CPU: VmHWM growth over VmRSS after resetting the high-water mark; CUDA: max_memory_allocated growth."""
    gc.collect()
    if impl.startswith("cuda"):
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _rss_kib("VmRSS:")
    run()
    return (_rss_kib("VmHWM:") - base) / 1024


def digest(run) -> str:
    h = hashlib.sha256()
    for arr in (run.output, run.delta, run.roles):
        h.update(np.ascontiguousarray(arr.cpu().numpy()).tobytes())
    stats = run.stats.host() if hasattr(run.stats, "host") else run.stats
    items = dataclasses.asdict(stats).items() if dataclasses.is_dataclass(stats) else sorted(stats.items())
    for key, value in items:
        value = value.item() if isinstance(value, torch.Tensor) else value
        h.update(f"{key}={value!r};".encode())
    d = getattr(run, "decisions", None)
    if d is not None:
        for f in dataclasses.fields(d):
            v = getattr(d, f.name)
            if f.name == "assignments" and v is not None:
                for g in dataclasses.fields(v):
                    h.update(np.asarray(getattr(v, g.name).cpu()).tobytes())
            elif isinstance(v, torch.Tensor):
                h.update(v.cpu().numpy().tobytes())
    return h.hexdigest()


def device_path_ops(cases) -> int:
    """Non-view aten operations of one pass over ``cases`` on the port's device path, counted on the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import parity.torch_layer as port

    if not hasattr(port, "_host_paths"):
        raise Missing("this checkout's port has no device path to force")

    class Count(TorchDispatchMode):
        ops = 0
        planning = False     # the truth-only plan runs on the host on every device: not counted

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view and not Count.planning:
                Count.ops += 1
            return out

    saved = port._host_paths, port._chunk_elements, port._plan
    plan = saved[2]

    def uncounted_plan(*args, **kwargs):
        Count.planning = True
        try:
            return plan(*args, **kwargs)
        finally:
            Count.planning = False

    port._host_paths = lambda t: False
    port._chunk_elements = lambda t: port.GPU_CHUNK_ELEMENTS
    port._plan = uncounted_plan
    try:
        with Count():
            for c, x, t in cases:
                yolo_forward(torch.from_numpy(x), torch.from_numpy(t), c)
    finally:
        port._host_paths, port._chunk_elements, port._plan = saved
    return Count.ops


def main() -> None:
    warnings.simplefilter("ignore")   # the refusal warnings are the same in both checkouts
    cases = load(sys.argv[1])
    runners: dict[str, tuple] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "digest":
            torch.set_num_threads(1)
            out = []
            for c, x, t in cases:
                try:
                    out.append(digest(yolo_forward(torch.from_numpy(x), torch.from_numpy(t), c)))
                except Exception as exc:  # a refusal is a result too: compare its type
                    out.append(f"raised {type(exc).__name__}")
            print(json.dumps({"digests": out}), flush=True)
            continue
        if words[0] == "ops":
            try:
                print(json.dumps({"ops": device_path_ops(cases)}), flush=True)
            except Missing as exc:
                print(json.dumps({"missing": str(exc)}), flush=True)
            continue
        impl, threads = words[1], int(words[2])
        torch.set_num_threads(threads)
        if impl not in runners:
            try:
                runners[impl] = _runner(impl, cases)
            except Missing as exc:
                print(json.dumps({"missing": str(exc)}), flush=True)
                continue
            runners[impl][0]()          # warm-up: first-use compilation, allocator
            runners[impl][1]()
        run, sync = runners[impl]
        if words[0] == "time":
            t0 = time.perf_counter()
            run()
            sync()
            print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
        else:
            print(json.dumps({"peak_extra_mib": peak_extra_mib(impl, run, sync)}), flush=True)


if __name__ == "__main__":
    main()

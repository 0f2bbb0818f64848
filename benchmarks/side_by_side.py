"""Two checkouts' implementations on the same inputs, in worker processes.

``Checkout(commit)`` makes a ``git worktree`` of ``commit`` in a temp dir;
``Worker`` drives one checkout through ``benchmarks/worker.py`` (copied
beside the cases, so old checkouts speak today's protocol). Timings of two
workers are interleaved run by run, so both see the same machine load.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def save_cases(path: Path, cases: Sequence[tuple[Any, np.ndarray, np.ndarray]]) -> None:
    """(config, input, truth) triples as the worker reads them."""
    arrays = {}
    for k, (_, x, t) in enumerate(cases):
        arrays[f"input_{k}"] = np.ascontiguousarray(x, np.float32)
        arrays[f"truth_{k}"] = np.ascontiguousarray(t, np.float32)
    configs = [dataclasses.asdict(c) for c, _, _ in cases]
    np.savez(path, configs=np.array(json.dumps(configs)), **arrays)


class Checkout:
    """``commit`` checked out (detached) in a temporary git worktree; removed on close."""

    def __init__(self, commit: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="parity-against-"))
        self.path = self.tmp / "tree"
        done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(self.path), commit],
                              capture_output=True, text=True)
        if done.returncode:
            shutil.rmtree(self.tmp, ignore_errors=True)
            print(f"error: cannot check out {commit!r}: {done.stderr.strip()}", file=sys.stderr)
            raise SystemExit(2)

    def close(self) -> None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.path)], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Worker:
    """A ``benchmarks/worker.py`` process importing ``parity`` from ``tree``."""

    def __init__(self, tree: Path, cases: Path) -> None:
        script = cases.parent / "worker.py"
        if not script.exists():
            shutil.copy(Path(__file__).with_name("worker.py"), script)
        # The tree first (its parity package), then whatever the caller's path held (dependencies).
        rest = os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": str(tree) + (os.pathsep + rest if rest else ""), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(script), str(cases)], cwd=str(tree), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"error: the worker for {self.proc.args} stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

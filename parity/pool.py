"""Worker processes that may die, hang or be interrupted: every item gets a result, nothing is left running.

``multiprocessing.Pool.imap_unordered`` waits forever for a worker that died
(a candidate calling ``os._exit``, a segfault) and has no per-item time
limit. Here each worker is a spawned ``Process`` on its own pipe; the parent
waits on the pipes and the process sentinels together, so a death is seen at
once. A worker reports each item as it finishes, so the first item it has not
reported is the one that killed it or hung: that item gets an error, the rest
of its group goes to a fresh worker. On SIGINT/SIGTERM (``interrupts``) every
worker is killed and joined before the ``Interrupted`` leaves.

Also here: the bound on ``--jobs`` (cores and memory) and the in-process
guards used when cases run in this process (``interrupts``, ``time_limit``).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator, Sequence, TypeVar

from .errors import CaseTimeout, Interrupted, ParityError

T = TypeVar("T")

# Memory one worker may take: torch, the C reference and a YOLOv4 case came to about 200 MB measured;
# twice that leaves room for a candidate's own allocations.
WORKER_MEMORY = 400 * 2**20
# Seconds a finished worker gets to leave by itself before it is killed.
JOIN_SECONDS = 5.0


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def max_jobs() -> tuple[int, str]:
    """The most worker processes this machine takes, and why (cores, memory at ``WORKER_MEMORY`` each)."""
    cores = _cores()
    memory = _available_memory()
    bound = cores if memory is None else min(cores, memory // WORKER_MEMORY)
    why = f"{cores} core(s)"
    if memory is not None:
        why += f", {memory / 2**30:.1f} GiB memory available at about {WORKER_MEMORY // 2**20} MiB per worker"
    return max(1, bound), why


def check_jobs(jobs: int | None) -> int | None:
    """``--jobs`` as given, or a ParityError naming the allowed range (None: run in this process)."""
    if jobs is None:
        return None
    bound, why = max_jobs()
    if not 1 <= jobs <= bound:
        raise ParityError(f"--jobs {jobs}: must lie in 1..{bound} on this machine ({why})")
    return jobs


def check_timeout(seconds: float | None) -> float | None:
    """``--timeout`` as given (None or 0: no limit), or a ParityError."""
    if seconds is None or seconds == 0:
        return None
    if not seconds > 0 or seconds == float("inf"):
        raise ParityError(f"--timeout {seconds}: must be a positive number of seconds (0: no limit)")
    return float(seconds)


# --- guards for cases run in this process ----------------------------------------------------------

def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def interrupts() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise ``Interrupted`` (main thread only; elsewhere a no-op)."""
    if not _main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Inside, ``CaseTimeout`` is raised after ``seconds`` (SIGALRM; main thread only, else no limit).

    Python code (a sleeping or looping candidate) is stopped; a C call that
    never returns is not: worker processes (``--jobs``) bound those too.
    """
    if not seconds or not _main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(_signum: int, _frame: Any) -> None:
        raise CaseTimeout(seconds)

    saved = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved)


# --- worker processes ------------------------------------------------------------------------------

def _worker_main(conn: Any, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    """A worker: receives groups of items, sends ``(key, value)`` per item as each finishes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent decides when the run stops
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):
            return                                    # the parent is gone: leave, never orphaned
        if items is None:
            return
        target(items, *args, emit=lambda key, value: conn.send((key, value)))


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the worker process was killed by {name} while running this case"
    return f"the worker process exited (exit code {exitcode}) while running this case"


class _Worker:
    """One spawned worker, the items it still owes (in order) and when it last reported."""

    def __init__(self, ctx: Any, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, target, args), daemon=True)
        self.proc.start()
        child.close()
        self.pending: list[tuple[str, Any]] = []
        self.since = time.monotonic()

    def give(self, group: list[tuple[str, Any]]) -> None:
        self.pending = list(group)
        self.since = time.monotonic()
        self.conn.send([item for _, item in group])

    def drain(self) -> list[tuple[str, Any]]:
        """Results already sent (also after the process died)."""
        out = []
        try:
            while self.pending and self.conn.poll():
                key, value = self.conn.recv()
                out.append((key, value))
                self.pending = [(k, i) for k, i in self.pending if k != key]
                self.since = time.monotonic()
        except (EOFError, OSError):
            pass
        return out

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=JOIN_SECONDS)
        self.kill()


def run_isolated(groups: Sequence[Sequence[T]], key: Callable[[T], str], target: Callable[..., None],
                 args: tuple[Any, ...], jobs: int, timeout: float | None,
                 on_result: Callable[[str, Any], None], on_lost: Callable[[str, str], None]) -> None:
    """Run ``target(items, *args, emit=...)`` over ``groups`` in ``jobs`` spawned workers.

    ``on_result(key, value)`` gets every value a worker emits; ``on_lost(key,
    why)`` every item whose worker died or ran past ``timeout`` seconds
    without reporting. Workers are spawned (torch is not fork-safe), killed on
    any exception (``Interrupted`` included) and always joined.
    """
    ctx = mp.get_context("spawn")
    queue = deque([(key(item), item) for item in group] for group in groups if group)
    workers = [_Worker(ctx, target, args) for _ in range(max(1, min(jobs, len(queue))))]
    clean = False
    try:
        for w in workers:
            if queue:
                w.give(queue.popleft())
        while any(w.pending for w in workers):
            busy = [w for w in workers if w.pending]
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0)
            for k, w in enumerate(workers):
                if not w.pending:
                    continue
                for rid, value in w.drain():
                    on_result(rid, value)
                dead = not w.proc.is_alive()
                if dead:
                    for rid, value in w.drain():     # what it sent before dying
                        on_result(rid, value)
                hung = timeout is not None and time.monotonic() - w.since > timeout
                if w.pending and (dead or hung):
                    w.kill()
                    (lost, _), rest = w.pending[0], w.pending[1:]
                    on_lost(lost, _died(w.proc.exitcode) if dead else
                            f"no result within {timeout:g} s (--timeout); the worker was killed")
                    if rest:
                        queue.appendleft(rest)
                    w.pending = []
                    workers[k] = w = _Worker(ctx, target, args)
                if queue and not w.pending:
                    if not w.proc.is_alive():       # left by itself after its last report
                        w.kill()
                        workers[k] = w = _Worker(ctx, target, args)
                    w.give(queue.popleft())
        clean = True
    finally:
        for w in workers:
            w.stop() if clean else w.kill()

"""Issue 12: nothing hangs, nothing is lost, no run passes that did not run.

Each test attacks one way a run could hang, lose data or pass without
running: worker death, a sleeping candidate, signals, overwritten
recordings, mismatched shards, late report failures, bad input. Every
subprocess has a hard timeout so that a regression fails instead of hanging.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.case import load_case
from parity.cases import case_from_spec
from parity.cli import main
from parity.errors import CaseFormatError, InputError, ParityError
from parity.pool import max_jobs
from parity.record import Recorder, RecorderWarning

ROOT = Path(__file__).resolve().parents[1]
CHAOS = str(ROOT / "tests" / "candidates_fixtures" / "chaos.py")
SMALL = ["--profile", "yolov3-tiny", "--cases", "1"]          # 2 cases (one sample, two heads)
HARD_LIMIT = 240                                               # seconds any subprocess may take


def _cli(*argv: str, timeout: float = HARD_LIMIT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "parity.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# --- 1. worker death, time-outs, signals -----------------------------------------------------------

@pytest.mark.parametrize("candidate", ["segfault", "os_exit_three"])     # exits in process: the next test
def test_worker_death_or_exit_is_an_error_and_the_run_ends(tmp_path, candidate):
    out = tmp_path / "r.json"
    proc = _cli("run", *SMALL, "--jobs", "1", "--candidate", f"{CHAOS}:{candidate}", "--json", str(out))
    assert proc.returncode == 2, proc.stderr
    data = json.loads(out.read_text())
    assert len(data["cases"]) == 2 and all(c["error"] for c in data["cases"])
    assert candidate in proc.stderr


def test_a_dead_worker_costs_only_its_case(tmp_path):
    """The candidate kills its worker on some cases only: those are errors, the rest are compared."""
    out = tmp_path / "r.json"
    proc = _cli("run", "--profile", "yolov3-tiny", "--cases", "2", "--jobs", "2", "--candidate",
                f"{CHAOS}:kills_second_worker_case", "--json", str(out))
    data = json.loads(out.read_text())
    errors = [c for c in data["cases"] if c["error"]]
    assert proc.returncode == 2 and len(data["cases"]) == 4
    assert errors and all("SIGKILL" in c["error"] for c in errors)
    assert any(c["passed"] for c in data["cases"])


@pytest.mark.parametrize("candidate", ["sys_exit_zero", "os_exit_zero", "keyboard_interrupt", "generator_exit",
                                       "sparse", "meta", "out_of_memory"])
def test_hostile_candidate_in_process_is_an_error_never_a_pass(capsys, candidate):
    code, err = _run(capsys, "run", *SMALL, "--candidate", f"{CHAOS}:{candidate}")
    assert code == 2
    assert "could not be compared" in err and candidate in err


def test_out_of_memory_names_the_size(capsys):
    code, err = _run(capsys, "run", *SMALL, "--candidate", f"{CHAOS}:out_of_memory")
    assert code == 2 and "out of memory on a head of shape" in err and "MiB" in err


@pytest.mark.parametrize("jobs", [[], ["--jobs", "1"]])
def test_per_case_timeout_names_the_candidate(tmp_path, jobs):
    start = time.monotonic()
    proc = _cli("run", *SMALL, *jobs, "--timeout", "1", "--candidate", f"{CHAOS}:sleeps")
    assert proc.returncode == 2
    assert "no result within 1 s (--timeout)" in proc.stderr and "sleeps" in proc.stderr
    assert time.monotonic() - start < HARD_LIMIT


@pytest.mark.parametrize("sig,jobs", [(signal.SIGINT, ["--jobs", "1"]), (signal.SIGTERM, [])])
def test_signal_ends_the_run_with_a_partial_report_and_no_orphans(tmp_path, sig, jobs):
    out = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "parity.cli", "run", *SMALL, *jobs, "--candidate",
                             f"{CHAOS}:sleeps", "--json", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + (60 if jobs else 5)      # in this process: a candidate sleeps by then
        while time.monotonic() < deadline and not (jobs and _children(proc.pid)):
            time.sleep(0.2)
        time.sleep(2.0)
        children = _children(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert f"interrupted by {sig.name}" in err
    data = json.loads(out.read_text())
    assert data["incomplete"] and data["passed"] is False
    time.sleep(0.5)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and not _zombie(pid)]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_partial_results_are_kept_when_interrupted(tmp_path):
    """Cases that finished before the signal stay in the report."""
    from parity.cases import suite_refs
    from parity.suite import RunOptions, run_suite

    refs = suite_refs(["yolov3-tiny"], [], [], 2, 0)
    sent = []

    def progress(_result):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)

    result = run_suite(refs, RunOptions(), progress=progress)
    assert len(result.cases) == 1 and result.cases[0].passed
    assert "SIGINT" in result.incomplete and "1 of 4" in result.incomplete and not result.passed


@pytest.mark.parametrize("jobs", ["0", "-1", "100000"])
def test_jobs_bound_is_stated(capsys, jobs):
    code, err = _run(capsys, "run", *SMALL, "--jobs", jobs)
    bound, why = max_jobs()
    assert code == 2 and f"must lie in 1..{bound}" in err and "core" in err


# --- 2. recording never destroys data --------------------------------------------------------------

def test_record_refuses_a_folder_holding_recordings_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "rec"
    assert _run(capsys, "record", *SMALL, "--out", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    code, err = _run(capsys, "record", *SMALL, "--seed", "1", "--out", str(out))
    assert code == 2 and "already holds 2 recording(s)" in err
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == before
    assert _run(capsys, "record", *SMALL, "--out", str(out), "--overwrite")[0] == 0


def test_record_refuses_out_equal_to_from(tmp_path, capsys):
    out = tmp_path / "rec"
    assert _run(capsys, "record", *SMALL, "--out", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    code, err = _run(capsys, "record", "--from", str(out), "--out", str(out), "--overwrite")
    assert code == 2 and "is the --from input" in err
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == before


def test_save_is_atomic(tmp_path, monkeypatch):
    """A write that fails midway leaves the old file and no temporary file."""
    from parity import atomic

    target = tmp_path / "a.json"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic.write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def _tiny_cfg(tmp_path: Path) -> str:
    from parity.config import YoloConfig

    return YoloConfig(classes=2, anchors=(10, 14, 23, 27, 37, 58), mask=(0, 1, 2), num=3, net_w=64, net_h=64)


def test_recorder_checks_out_at_construction(tmp_path):
    config = _tiny_cfg(tmp_path)
    (tmp_path / "old.npz").write_bytes(b"x")
    with pytest.raises(InputError, match="already holds 1 recording"):
        Recorder(cfg=config, out=tmp_path)
    Recorder(cfg=config, out=tmp_path, overwrite=True).close()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(InputError, match="not writable"):
            Recorder(cfg=config, out=locked / "sub")
    finally:
        locked.chmod(0o700)


def test_recorder_write_error_warns_once_and_stops(tmp_path, monkeypatch):
    from parity import atomic

    config = _tiny_cfg(tmp_path)
    calls = []
    real = atomic.os.fdopen

    class Full(io.RawIOBase):
        def write(self, data):
            calls.append(len(data))
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: (os.close(fd), Full())[1])
    x = torch.zeros(1, config.channels, 2, 2)
    truth = torch.zeros(1, 6)
    rec = Recorder(cfg=config, out=tmp_path / "rec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert rec.record(x, truth) == []            # never raises into the training loop
    monkeypatch.setattr(atomic.os, "fdopen", real)
    assert len([w for w in caught if issubclass(w.category, RecorderWarning)]) == 1
    assert rec.stopped and len(calls) == 1
    assert list((tmp_path / "rec").iterdir()) == []      # no partial file left


def test_recorder_refuses_fractional_image_index(tmp_path):
    config = _tiny_cfg(tmp_path)
    x = torch.zeros(2, config.channels, 2, 2)
    rows = torch.tensor([[0.5, 0, 0.5, 0.5, 0.1, 0.1]])
    with Recorder(cfg=config, out=tmp_path / "rec") as rec, pytest.raises(InputError, match="image index 0.5"):
        rec.record(x, rows)


# --- 3. merge --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    for spec, seed, name in (("1/2", "0", "s1"), ("2/2", "0", "s2"), ("2/2", "5", "t2"), ("1/3", "0", "u1")):
        assert main(["run", *SMALL, "--seed", seed, "--shard", spec, "--json", str(folder / f"{name}.json")]) == 0
    return folder


@pytest.mark.parametrize("files,message", [
    (["s1", "s1"], "shard 1/2 again"),
    (["s1"], "shard(s) 2/2 missing"),
    (["s1", "t2"], "seed 5 differs"),
    (["s1", "u1"], "from a run in 3 shards"),
])
def test_merge_refuses_what_is_not_one_whole_run(shards, capsys, files, message):
    code, err = _run(capsys, "merge", *(str(shards / f"{f}.json") for f in files))
    assert code == 2 and message in err


def test_merge_of_every_shard_passes(shards, capsys):
    code, _ = _run(capsys, "merge", str(shards / "s1.json"), str(shards / "s2.json"))
    assert code == 0


def test_merge_names_a_result_without_cases(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema": "darknet-parity/suite-result/1"}))
    code, err = _run(capsys, "merge", str(path))
    assert code == 2 and "without 'cases'" in err and "Traceback" not in err


# --- 4. output paths checked first -----------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--json", "--junit", "--html"])
def test_output_path_checked_before_any_case(tmp_path, capsys, flag, monkeypatch):
    import parity.suite

    ran = []
    monkeypatch.setattr(parity.suite, "run_suite", lambda *a, **k: ran.append(1))
    code, err = _run(capsys, "run", *SMALL, flag, str(tmp_path))
    assert code == 2 and "is a folder" in err and not ran
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _run(capsys, "run", *SMALL, flag, str(blocker / "r.out"))
    assert code == 2 and "is not a folder" in err and not ran


# --- 5. every error path: one line, exit 2 ---------------------------------------------------------

def test_corrupt_case_in_a_folder_is_that_case_s_error(tmp_path, capsys):
    good = sorted((ROOT / "fixtures").rglob("*.npz"))[0]
    (tmp_path / "good.npz").write_bytes(good.read_bytes())
    data = bytearray(good.read_bytes())
    for k in range(200, 260):
        data[k] ^= 0xFF
    (tmp_path / "corrupt.npz").write_bytes(bytes(data))
    out = tmp_path / "r.json"
    code, err = _run(capsys, "replay", str(tmp_path), "--json", str(out))
    cases = {Path(c["case"]).name: c for c in json.loads(out.read_text())["cases"]}
    assert code == 2 and "corrupt.npz" in err
    assert cases["corrupt.npz"]["error"] and cases["good.npz"]["error"] is None


def test_a_header_claiming_a_huge_array_is_refused(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("input.npy", header.getvalue() + bytes(100))
    with pytest.raises(CaseFormatError, match="claims shape"):
        load_case(path)


def test_negative_seed(capsys):
    code, err = _run(capsys, "run", *SMALL, "--seed", "-1")
    assert code == 2 and "--seed -1" in err


def test_explain_beyond_the_suite_says_its_size():
    with pytest.raises(ParityError, match="has 48 cases"):
        case_from_spec("yolov4#999999")
    assert case_from_spec("yolov4#47").input.ndim == 4
    assert case_from_spec("yolov4#60", cases=21).input.ndim == 4

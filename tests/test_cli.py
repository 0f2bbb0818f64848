"""The darknet-parity command line: help without heavy imports, exit codes 0/1/2."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity.case import save_case
from parity.cli import main
from parity.generate import random_case, random_config
from parity.reference import run_reference


def _case_file(tmp_path, tamper: bool = False):
    config = random_config(np.random.default_rng([9, 9]), "alexeyab")
    case = random_case(99, config)
    res = run_reference(case.config, case.input, case.truth)
    case.output, case.delta, case.stats = res.output, res.delta, res.stats.as_dict()
    if tamper:
        k = np.flatnonzero(case.delta)[0]
        case.delta.flat[k] *= 1.01
    path = tmp_path / ("bad.npz" if tamper else "good.npz")
    save_case(path, case)
    return path


def test_help_needs_neither_torch_nor_numpy():
    code = ("import sys; from parity.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "replay" in out.stdout and "verify-reference" in out.stdout


def test_replay_agreeing_case_exits_0(tmp_path, capsys):
    assert main(["replay", str(_case_file(tmp_path))]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


def test_replay_mismatch_exits_1(tmp_path, capsys):
    assert main(["replay", str(_case_file(tmp_path, tamper=True)), "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "0 passed, 1 failed" in out and "bad.npz" in out
    assert (tmp_path / "r.json").exists()


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "absent.npz")]) == 2
    assert "absent.npz: no such case file or folder" in capsys.readouterr().err


def test_bad_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--reference", "nope", "x.npz"])
    assert exc.value.code == 2


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_console_script_is_installed():
    # The script beside this interpreter (a venv need not be activated), else the one on PATH.
    beside = Path(sys.executable).parent / "darknet-parity"
    script = str(beside) if beside.exists() else shutil.which("darknet-parity")
    assert script, f"no darknet-parity script beside {sys.executable} or on PATH"
    out = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Exit codes" in out.stdout


class TestRunAndMerge:
    def test_run_a_profile_writes_reports(self, tmp_path, capsys):
        code = main(["run", "--profile", "yolov4-tiny", "--cases", "2", "--json", str(tmp_path / "r.json"),
                     "--junit", str(tmp_path / "r.xml"), "--html", str(tmp_path / "r.html")])
        out = capsys.readouterr().out
        assert "4 passed, 0 failed" in out  # 2 samples x 2 heads
        assert code in (0, 1)  # 1 only if 2 samples miss an enabled branch (reported as such)
        if code == 1:
            assert "never hit" in out
        for name in ("r.json", "r.xml", "r.html"):
            assert (tmp_path / name).stat().st_size > 0

    def test_shards_merge_to_the_whole(self, tmp_path, capsys):
        args = ["run", "--profile", "yolov4-tiny", "--cases", "3"]
        assert main(args + ["--json", str(tmp_path / "all.json")]) in (0, 1)
        for k in (1, 2):
            assert main(args + ["--shard", f"{k}/2", "--json", str(tmp_path / f"s{k}.json")]) in (0, 1)
        capsys.readouterr()
        code = main(["merge", str(tmp_path / "s1.json"), str(tmp_path / "s2.json"), "--json", str(tmp_path / "m.json")])
        from parity.suite import SuiteResult
        whole, merged = SuiteResult.load(tmp_path / "all.json"), SuiteResult.load(tmp_path / "m.json")
        assert sorted(c.case for c in merged.cases) == sorted(c.case for c in whole.cases)
        assert merged.coverage == whole.coverage and code == (0 if whole.passed else 1)

    def test_wrong_candidate_exits_1_and_names_the_cause(self, tmp_path, capsys):
        fixture = tmp_path / "wrong.py"
        fixture.write_text("from parity.torch import yolo_forward\n"
                           "def loss(x, t, c):\n    return -yolo_forward(x, t, c).delta\n")
        code = main(["run", "--profile", "yolov4-tiny", "--cases", "2", "--candidate", f"{fixture}:loss",
                     "--convention", "delta"])
        out = capsys.readouterr().out
        assert code == 1 and "sign" in out

    def test_bad_shard_and_unknown_profile_exit_2(self, capsys):
        assert main(["run", "--profile", "yolov4-tiny", "--shard", "3/2"]) == 2
        assert main(["run", "--profile", "no-such-profile"]) == 2
        assert "unknown profile 'no-such-profile'" in capsys.readouterr().err

    def test_merge_refuses_other_json(self, tmp_path, capsys):
        (tmp_path / "x.json").write_text("{}")
        assert main(["merge", str(tmp_path / "x.json")]) == 2

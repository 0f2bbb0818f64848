"""The darknet-parity command line: help without heavy imports, exit codes 0/1/2."""
from __future__ import annotations

import subprocess
import sys

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
    case.output, case.delta, case.stats = res.output, res.delta, res.stats
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
    assert "1 compared, 0 mismatched" in capsys.readouterr().out


def test_replay_mismatch_exits_1(tmp_path, capsys):
    assert main(["replay", str(_case_file(tmp_path, tamper=True)), "--json", str(tmp_path / "r.json")]) == 1
    assert "MISMATCH" in capsys.readouterr().out
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
    out = subprocess.run(["darknet-parity", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Exit codes" in out.stdout

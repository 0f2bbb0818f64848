"""The dev set of real-darknet recordings: found, or its absence said out loud (issue 10)."""
from __future__ import annotations

import pytest

from parity.cli import main
from parity.errors import ParityError
from parity.recorded import ENV, EXPECTED, locate
import parity.recorded as recorded


def test_a_named_folder_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ParityError, match="no such folder"):
        locate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParityError, match="holds no recorded case"):
        locate(tmp_path / "empty")


def test_the_environment_variable_must_name_a_real_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, str(tmp_path / "nope"))
    with pytest.raises(ParityError, match=f"\\${ENV}"):
        locate()


def test_absence_of_the_default_folder_is_a_note_counting_the_unchecked_cases(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(recorded, "DEFAULT_DIRS", (tmp_path / "shared" / "recorded",))
    found = locate()
    assert found.path is None and found.cases == 0
    assert "ABSENT" in found.note and str(sum(EXPECTED.values())) in found.note


def test_verify_reference_refuses_a_missing_recorded_folder(tmp_path, capsys):
    assert main(["verify-reference", "--recorded", str(tmp_path / "nope"), "--libdarknet-cases", "0"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_verify_reference_says_when_the_dev_set_is_absent(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(recorded, "DEFAULT_DIRS", (tmp_path / "absent",))
    main(["verify-reference", "--libdarknet-cases", "0"])
    out = capsys.readouterr().out
    assert out.startswith("note: recorded dev set ABSENT") and "NOT checked" in out

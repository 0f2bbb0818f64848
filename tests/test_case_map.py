"""Cases whose config has a map= (class_map): the map file travels with the case.

A cfg can only name a map file, so ``save_case`` writes ``maps/STEM.map``
beside the case and ``map=maps/STEM.map`` in its cfg; ``load_case`` reads it
back relative to the case's folder (as for ``shared/recorded/alexeyab-extra*``).
"""
from __future__ import annotations

import importlib.util
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.case import case_bytes, load_case, map_file_name, save_case
from parity.cfg import dump_yolo_cfg, with_map_option, yolo_config_from_cfg
from parity.errors import ConfigError, DarknetInputWarning, ParityError
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.torch import yolo_forward

ROOT = Path(__file__).resolve().parent.parent
RECORDED_MAP = Path("/work/shared/recorded/alexeyab-extra-O2/map_s3800200.npz")


def _map_config(start: int = 0):
    """The first random_config (class_map_p=0.5) with a non-identity map over >= 3 classes."""
    for k in range(start, start + 200):
        config = random_config(np.random.default_rng([31, k]), "alexeyab", class_map_p=0.5)
        cmap = config.class_map
        if cmap is not None and config.classes >= 3 and cmap != tuple(range(config.classes)):
            return config
    raise AssertionError("no map config drawn")


def _runs(case):
    ref = run_reference(case.config, case.input, case.truth, flavor=case.flavor)
    port = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config, case.flavor)
    return ref, port


class TestSaveAndLoad:
    def test_round_trip_writes_the_map_file_and_reads_it_back(self, tmp_path):
        config = _map_config()
        case = random_case(41, config)
        assert "map=" not in case.cfg            # dump_yolo_cfg cannot name a file
        save_case(tmp_path / "m.npz", case)
        map_file = tmp_path / "maps" / "m.map"
        assert [int(v) for v in map_file.read_text().split("\n")[:-1]] == list(config.class_map)
        back = load_case(tmp_path / "m.npz")
        assert "map=maps/m.map" in back.cfg.splitlines()
        assert back.config == case.config and back.config.class_map == config.class_map
        np.testing.assert_array_equal(back.input, case.input)
        np.testing.assert_array_equal(back.truth, case.truth)

    def test_the_reloaded_case_runs_as_the_original_in_the_reference_and_the_port(self, tmp_path):
        config = _map_config()
        case = random_case(41, config)
        save_case(tmp_path / "m.npz", case)
        back = load_case(tmp_path / "m.npz")
        (ref0, port0), (ref1, port1) = _runs(case), _runs(back)
        np.testing.assert_array_equal(ref1.delta, ref0.delta)
        np.testing.assert_array_equal(ref1.output, ref0.output)
        assert ref1.stats.as_dict() == ref0.stats.as_dict()
        np.testing.assert_array_equal(port1.delta.numpy(), port0.delta.numpy())
        # and the map matters on this case: without it the reference writes other class deltas
        plain = run_reference(config.replace(class_map=None), case.input, case.truth, flavor="alexeyab")
        assert not np.array_equal(plain.delta, ref0.delta)

    def test_a_case_without_a_map_writes_no_map_file_and_the_same_bytes(self, tmp_path):
        config = random_config(np.random.default_rng([2024, 9]), "alexeyab")
        case = random_case(10_009, config, flavor="alexeyab", nonfinite=3)
        save_case(tmp_path / "c.npz", case)
        assert not (tmp_path / "maps").exists()
        assert (tmp_path / "c.npz").read_bytes() == case_bytes(case)

    def test_case_bytes_of_a_map_case_needs_the_map_name(self):
        case = random_case(41, _map_config())
        with pytest.raises(ParityError, match="class_map .* map_name="):
            case_bytes(case)
        cfg = load_case_text(case_bytes(case, "maps/x.map"))
        assert "map=maps/x.map" in cfg

    def test_a_recorded_map_case_saved_elsewhere_takes_its_map_along(self, tmp_path):
        if not RECORDED_MAP.exists():
            pytest.skip(f"{RECORDED_MAP} not present")
        case = load_case(RECORDED_MAP)
        save_case(tmp_path / "sub" / "again.npz", case)
        back = load_case(tmp_path / "sub" / "again.npz")
        assert back.config == case.config and (tmp_path / "sub" / "maps" / "again.map").is_file()
        assert [ln for ln in back.cfg.splitlines() if ln.replace(" ", "").startswith("map=")] == ["map=maps/again.map"]
        # every other cfg line is kept as recorded
        assert [ln for ln in back.cfg.splitlines() if "map" not in ln] == \
               [ln for ln in case.cfg.splitlines() if "map" not in ln]
        np.testing.assert_array_equal(run_reference(back.config, back.input, back.truth).delta, case.delta)


def load_case_text(data: bytes) -> str:
    with np.load(io.BytesIO(data)) as npz:
        return str(npz["cfg"][()])


class TestNoSilentOverwrite:
    def test_a_different_map_file_is_refused_unless_asked(self, tmp_path):
        config = _map_config()
        case = random_case(41, config)
        (tmp_path / "maps").mkdir()
        other = tmp_path / "maps" / "m.map"
        other.write_text("0\n" * config.classes)
        with pytest.raises(ParityError, match=r"maps/m\.map: a different map file is already there"):
            save_case(tmp_path / "m.npz", case)
        assert other.read_text() == "0\n" * config.classes and not (tmp_path / "m.npz").exists()
        save_case(tmp_path / "m.npz", case, overwrite=True)
        assert load_case(tmp_path / "m.npz").config.class_map == config.class_map

    def test_the_same_map_file_is_no_conflict(self, tmp_path):
        case = random_case(41, _map_config())
        save_case(tmp_path / "m.npz", case)
        save_case(tmp_path / "m.npz", case)          # saving again is not an overwrite of anything else
        assert load_case(tmp_path / "m.npz").config == case.config

    def test_a_pjreddie_map_round_trips_too(self, tmp_path):
        # pjreddie's parse_yolo reads map= (read_map) and its forward pass applies it, as AlexeyAB's does.
        config = random_config(np.random.default_rng([5, 1]), "pjreddie")
        case = random_case(3, config, flavor="pjreddie")
        case.config = config.replace(class_map=tuple(reversed(range(config.classes))))
        save_case(tmp_path / "p.npz", case)
        assert load_case(tmp_path / "p.npz").config.class_map == case.config.class_map


class TestWithMapOption:
    def test_adds_a_line_at_the_end_of_the_yolo_section(self):
        cfg = "[net]\nwidth=64\nheight=64\n\n[yolo]\nclasses=3\nnum=1\n\n# tail comment\n"
        out = with_map_option(cfg, "maps/a.map")
        assert out == "[net]\nwidth=64\nheight=64\n\n[yolo]\nclasses=3\nnum=1\nmap=maps/a.map\n\n# tail comment\n"

    def test_replaces_the_line_darknet_reads(self, tmp_path):
        cfg = "[net]\nwidth=64\nheight=64\n[yolo]\nclasses=3\nmap = old.map\nnum=1\n"
        assert with_map_option(cfg, "maps/b.map") == "[net]\nwidth=64\nheight=64\n[yolo]\nclasses=3\nmap=maps/b.map\nnum=1\n"
        assert with_map_option(cfg, "old.map") == cfg

    @pytest.mark.parametrize("name", ["", "a b.map", "x#.map", "a=b"])
    def test_a_name_a_cfg_cannot_hold_is_refused(self, name):
        with pytest.raises(ConfigError, match="cannot be written to a cfg"):
            with_map_option(dump_yolo_cfg(_map_config()), name)

    def test_map_file_name_is_relative_to_the_case_folder(self, tmp_path):
        assert map_file_name(tmp_path / "deep" / "x.npz") == "maps/x.map"
        (tmp_path / "maps").mkdir()
        (tmp_path / "maps" / "x.map").write_text("2\n0\n1\n")
        cfg = with_map_option("[net]\nwidth=32\nheight=32\n[yolo]\nclasses=3\n", "maps/x.map")
        assert yolo_config_from_cfg(cfg, path=f"{tmp_path / 'x.npz'}:cfg").class_map == (2, 0, 1)


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("darknet_parity_tools_fuzz_map", ROOT / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::parity.errors.DarknetInputWarning")
class TestFuzzSaves:
    """tools/fuzz.py's failure and crash saves keep the map (campaign 0, case 62 draws one)."""

    INDEX = 62

    def test_a_shrunk_failure_keeps_its_map(self, tmp_path):
        fuzz = _load_fuzz()
        original = fuzz.fuzz_case(self.INDEX, 0)
        assert original.config.class_map is not None
        info = fuzz.shrink_and_save({"index": self.INDEX, "status": "mismatch"}, 0, 5, folder=tmp_path)
        saved = load_case(tmp_path / f"fuzz-s0-{self.INDEX:06d}.npz")
        assert saved.config.class_map == original.config.class_map[: len(saved.config.class_map)]
        assert (tmp_path / "maps" / f"fuzz-s0-{self.INDEX:06d}.map").is_file() and "map=" in info["config"]
        ref = run_reference(saved.config, saved.input, saved.truth, flavor=saved.flavor)
        np.testing.assert_array_equal(ref.delta, saved.delta)

    def test_a_crash_save_keeps_its_map(self, tmp_path):
        fuzz = _load_fuzz()
        original = fuzz.fuzz_case(self.INDEX, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DarknetInputWarning)
            fuzz.save_crash(self.INDEX, 0, folder=tmp_path)
        saved = load_case(tmp_path / f"fuzz-s0-{self.INDEX:06d}-crash.npz")
        assert saved.config == original.config


class TestRecorder:
    """parity.record.Recorder: a head whose cfg names a map file records cases that read the map back."""

    def _cfg(self, folder: Path) -> Path:
        (folder / "cfgdir").mkdir()
        (folder / "cfgdir" / "classes.map").write_text("2\n0\n1\n")
        cfg = folder / "cfgdir" / "one.cfg"
        cfg.write_text("[net]\nwidth=64\nheight=64\nbatch=2\n\n[yolo]\nmask=0,1\nanchors=10,14,23,27,37,58\n"
                       "classes=3\nnum=3\nmap=classes.map\nmax=4\n")
        return cfg

    def test_recorded_cases_keep_the_map(self, tmp_path):
        from parity.record import Recorder
        out = tmp_path / "rec"
        head = torch.zeros(2, 2 * 8, 4, 4)
        truth = torch.zeros(2, 4, 6)
        truth[0, 0] = torch.tensor([0.3, 0.4, 0.2, 0.2, 1.0, 0.0])
        with Recorder(cfg=self._cfg(tmp_path), out=out, every=1) as rec:
            written = rec.record([head], truth)
        case = load_case(written[0])
        assert case.config.class_map == (2, 0, 1)
        assert (out / "maps" / f"{written[0].stem}.map").read_text() == "2\n0\n1\n"
        assert rec.bytes_written == sum(p.stat().st_size for p in rec.written)

    def test_a_folder_holding_map_files_is_refused_without_overwrite(self, tmp_path):
        from parity.record import Recorder
        (tmp_path / "rec" / "maps").mkdir(parents=True)
        (tmp_path / "rec" / "maps" / "step00000000_head0.map").write_text("0\n0\n0\n")
        with pytest.raises(ParityError, match="already holds 1 recording"):
            Recorder(cfg=self._cfg(tmp_path), out=tmp_path / "rec")
        Recorder(cfg=self._cfg_again(tmp_path), out=tmp_path / "rec", overwrite=True).close()

    def _cfg_again(self, folder: Path) -> Path:
        return folder / "cfgdir" / "one.cfg"

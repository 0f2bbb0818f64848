"""Format-v1 case files: round trip, flavor from meta, and clear errors for bad files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from parity.case import load_case, save_case
from parity.cfg import dump_yolo_cfg
from parity.config import YoloConfig
from parity.errors import CaseFormatError
from parity.generate import random_case, random_config
from parity.reference import run_reference


def _filled_case(flavor: str = "alexeyab"):
    config = random_config(np.random.default_rng([5, 1]), flavor)
    case = random_case(77, config, flavor=flavor)
    res = run_reference(case.config, case.input, case.truth, flavor=flavor)
    case.output, case.delta, case.stats = res.output, res.delta, res.stats.as_dict()
    return case


class TestRoundTrip:
    @pytest.mark.parametrize("flavor", ["alexeyab", "pjreddie"])
    def test_save_then_load_gives_the_same_case(self, tmp_path, flavor):
        case = _filled_case(flavor)
        path = tmp_path / "c.npz"
        save_case(path, case)
        back = load_case(path)
        assert back.flavor == flavor and back.config == case.config
        for key in ("input", "truth", "output", "delta"):
            np.testing.assert_array_equal(getattr(back, key), getattr(case, key))
        assert back.stats["cost"] == case.stats["cost"]
        assert back.meta["format"] == 1

    def test_flavor_defaults_to_alexeyab_without_meta(self, tmp_path):
        cfg = dump_yolo_cfg(YoloConfig(classes=1, max_boxes=90))
        np.savez_compressed(tmp_path / "m.npz", cfg=np.array(cfg), input=np.zeros((1, 6, 2, 2), np.float32),
                            truth=np.zeros((1, 90, 6), np.float32))
        case = load_case(tmp_path / "m.npz")
        assert case.flavor == "alexeyab" and case.output is None


class TestBadFiles:
    def test_missing_key_is_named(self, tmp_path):
        np.savez_compressed(tmp_path / "x.npz", cfg=np.array("[net]\n[yolo]\n"))
        with pytest.raises(CaseFormatError, match=r"x\.npz: missing key\(s\) input, truth"):
            load_case(tmp_path / "x.npz")

    def test_wrong_dtype_is_named(self, tmp_path):
        case = _filled_case()
        save_case(tmp_path / "y.npz", case)
        data = dict(np.load(tmp_path / "y.npz"))
        data["input"] = data["input"].astype(np.float64)
        np.savez_compressed(tmp_path / "y.npz", **data)
        with pytest.raises(CaseFormatError, match="'input' has dtype float64"):
            load_case(tmp_path / "y.npz")

    def test_not_an_npz(self, tmp_path):
        (tmp_path / "z.npz").write_text("hello")
        with pytest.raises(CaseFormatError, match="not a readable .npz case"):
            load_case(tmp_path / "z.npz")

    def test_unknown_flavor_in_meta(self, tmp_path):
        case = _filled_case()
        case.meta = {"flavor": "hank"}
        case.flavor = "hank"
        save_case(tmp_path / "f.npz", case)
        with pytest.raises(CaseFormatError, match="meta.flavor 'hank'"):
            load_case(tmp_path / "f.npz")

    def test_delta_shape_must_match_input(self, tmp_path):
        case = _filled_case()
        case.delta = case.delta[:, :1]
        save_case(tmp_path / "s.npz", case)
        with pytest.raises(CaseFormatError, match="'delta' shape"):
            load_case(tmp_path / "s.npz")

    def test_meta_must_be_json(self, tmp_path):
        case = _filled_case()
        save_case(tmp_path / "j.npz", case)
        data = dict(np.load(tmp_path / "j.npz"))
        data["meta"] = np.array("{not json")
        np.savez_compressed(tmp_path / "j.npz", **data)
        with pytest.raises(CaseFormatError, match="'meta' is not JSON"):
            load_case(tmp_path / "j.npz")
        json.dumps(case.stats)  # stats of a real run serialise

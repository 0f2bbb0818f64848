"""darknet's CPU and GPU backward: which delta reaches the previous layer.

The CPU backward (``backward_yolo_layer``) adds the layer's delta as is; the
GPU backward (AlexeyAB's ``backward_yolo_layer_gpu``) adds ``delta *
(loss_scale * delta_normalizer)``, pjreddie's adds it unscaled. The recorded
``delta_normalizer_*`` cases hold darknet's own (CPU forward) delta with
``delta_normalizer=3``: the CPU semantics must reproduce it bit for bit, the
GPU semantics it times 3.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.case import load_case, save_case
from parity.cli import main
from parity.config import backward_scale
from parity.errors import InputError
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.replay import shared_recorded_dir
from parity.torch import yolo_forward

RECORDED = shared_recorded_dir()


def _normalizer_cases() -> list:
    paths = sorted((RECORDED / "alexeyab-extra-O2").glob("delta_normalizer_*.npz")) if RECORDED else []
    return [pytest.param(p, id=p.stem) for p in paths] or [
        pytest.param(None, marks=pytest.mark.skip(reason="../shared/recorded is absent"))]


@pytest.mark.parametrize("path", _normalizer_cases())
def test_recorded_delta_is_the_cpu_one_and_the_gpu_one_is_it_times_the_normalizer(path):
    case = load_case(path)
    assert np.float32(case.config.delta_normalizer) == np.float32(3.0)
    assert np.count_nonzero(case.delta)
    factor = np.float32(case.config.delta_normalizer)
    for backward, expected in (("cpu", case.delta), ("gpu", case.delta * factor)):
        ref = run_reference(case.config, case.input, case.truth, flavor=case.flavor, backward=backward)
        np.testing.assert_array_equal(ref.delta, expected, err_msg=f"C reference, {backward}")
        port = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config, case.flavor,
                            backward=backward)
        assert np.abs(port.delta.numpy() - expected).max() <= 1e-6 * max(1.0, float(np.abs(expected).max()))
        assert np.float32(ref.stats["cost"]) == np.float32(case.stats["cost"])   # the cost never scales


def test_backward_scale_per_flavor():
    config = random_config(np.random.default_rng([3, 1]), "alexeyab").replace(delta_normalizer=0.1)
    assert backward_scale(config, "alexeyab") is None
    assert backward_scale(config, "alexeyab", "gpu") == float(np.float32(0.1))
    assert backward_scale(config, "alexeyab", "gpu", 1024.0) == float(np.float32(1024.0) * np.float32(0.1))
    pj = random_config(np.random.default_rng([3, 1]), "pjreddie")
    assert backward_scale(pj, "pjreddie", "gpu") is None          # pjreddie's GPU backward: axpy with 1
    with pytest.raises(InputError, match="pjreddie darknet has no loss_scale"):
        backward_scale(pj, "pjreddie", "gpu", 2.0)
    with pytest.raises(InputError, match="backward 'tpu'"):
        backward_scale(config, "alexeyab", "tpu")


def _gpu_case(tmp_path):
    """A case file recorded from the C reference (CPU delta) with delta_normalizer 0.5, and a GPU candidate."""
    config = random_config(np.random.default_rng([11, 5]), "alexeyab").replace(delta_normalizer=0.5)
    case = random_case(1105, config)
    res = run_reference(case.config, case.input, case.truth)
    case.output, case.delta, case.stats = res.output, res.delta, res.stats.as_dict()
    assert np.count_nonzero(case.delta)
    save_case(tmp_path / "case.npz", case)
    (tmp_path / "gpu_port.py").write_text(
        "from parity.torch import yolo_forward\n\n"
        "def loss(input, truth, config):\n"
        "    return yolo_forward(input, truth, config, backward='gpu').delta\n")
    return str(tmp_path / "case.npz"), f"{tmp_path / 'gpu_port.py'}:loss"


class TestHarness:
    def test_backward_gpu_holds_the_candidate_to_the_gpu_delta(self, tmp_path, capsys):
        path, gpu = _gpu_case(tmp_path)
        assert main(["replay", path]) == 0                                   # CPU port vs CPU reference
        assert main(["replay", path, "--backward", "gpu"]) == 1              # CPU port vs GPU reference
        assert main(["replay", path, "--backward", "gpu", "--candidate", gpu, "--convention", "delta"]) == 0
        assert main(["replay", path, "--candidate", gpu, "--convention", "delta"]) == 1

    def test_loss_scale_enters_the_gpu_delta(self, tmp_path, capsys):
        path, gpu = _gpu_case(tmp_path)
        args = ["replay", path, "--backward", "gpu", "--candidate", gpu, "--convention", "delta"]
        assert main(args + ["--loss-scale", "4"]) == 1
        assert main(args + ["--loss-scale", "nan"]) == 2

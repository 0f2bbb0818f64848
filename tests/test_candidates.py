"""Candidates: loading by spec, the three conventions, layouts, and every error a user can cause."""
from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.candidates import Candidate, CandidateOutput, load_candidate, run_candidate
from parity.errors import ParityError
from parity.generate import random_case, random_config
from parity.roles import ROLE_BEST_ANCHOR, ROLE_EXTRA_ANCHOR, ROLE_IGNORED, ROLE_TRUTH_THRESH
from parity.torch import yolo_forward

FIXTURES = Path(__file__).resolve().parent / "candidates_fixtures"
PORTS = "candidates_fixtures.ports"
BROKEN = "candidates_fixtures.broken"


def _case(seed: int = 3, flavor: str = "alexeyab", **changes):
    config = random_config(np.random.default_rng([29, seed]), flavor)
    if changes:
        config = config.replace(**changes)
    return random_case(seed, config, flavor=flavor)


def _darknet_delta(case) -> np.ndarray:
    delta = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config, case.flavor).delta
    return delta.numpy()


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _error(spec: str, case=None, **kwargs) -> str:
    with pytest.raises(ParityError) as info:
        run_candidate(load_candidate(spec, **kwargs), case or _case())
    return str(info.value)


class TestConventions:
    @pytest.mark.parametrize("seed", range(4))
    @pytest.mark.parametrize("flavor", ["alexeyab", "pjreddie"])
    @pytest.mark.parametrize("convention", ["delta", "grad", "loss"])
    @pytest.mark.parametrize("declared", [True, False], ids=["declared", "detected"])
    def test_parity_wrapped_each_way_gives_darknet_delta_exactly(self, convention, declared, flavor, seed):
        case = _case(seed, flavor)
        cand = load_candidate(f"{PORTS}:as_{convention}", convention=convention if declared else None)
        out = run_candidate(cand, case)
        assert isinstance(out, CandidateOutput)
        assert (out.convention, out.detected) == (convention, not declared)
        assert out.delta.dtype == np.float32 and out.delta.shape == case.input.shape
        np.testing.assert_array_equal(out.delta, _darknet_delta(case))
        assert out.nonfinite == 0

    def test_detection_with_new_coords(self):
        # Raw (unactivated) outputs: darknet's -p can have either sign; detection follows darknet's own sign.
        case = _case(1, new_coords=1, scale_x_y=2.0)
        for convention in ("delta", "grad"):
            out = run_candidate(load_candidate(f"{PORTS}:as_{convention}"), case)
            assert out.convention == convention
            np.testing.assert_array_equal(out.delta, _darknet_delta(case))

    def test_builtin_parity_is_a_declared_delta(self):
        case = _case(2)
        cand = load_candidate("parity")
        assert cand.convention == "delta"
        out = run_candidate(cand, case)
        assert (out.convention, out.detected) == ("delta", False)
        np.testing.assert_array_equal(out.delta, _darknet_delta(case))

    def test_builtin_convention_cannot_be_contradicted(self):
        with pytest.raises(ParityError, match=r"'parity' is built in and returns a delta; convention 'grad'"):
            load_candidate("parity", convention="grad")
        assert load_candidate("naive", convention="loss").convention == "loss"

    def test_candidate_gets_fresh_float32_tensors_and_six_column_truth(self):
        case = _case(4)
        case = dataclasses.replace(case, truth=case.truth[:, :, :5].copy())
        before = case.input.copy()
        seen = {}

        def spy(input, truth, config):
            seen.update(input=input, truth=truth, config=config)
            input.mul_(0)  # a candidate scribbling on its input must not touch the case
            return torch.zeros_like(input)

        run_candidate(Candidate("spy", spy, "delta"), case)
        assert seen["input"].dtype == torch.float32 and seen["truth"].dtype == torch.float32
        assert seen["truth"].shape == case.truth.shape[:2] + (6,)
        assert torch.equal(seen["truth"][..., :5], torch.from_numpy(case.truth))
        assert not seen["truth"][..., 5].any()
        assert seen["config"] is case.config
        np.testing.assert_array_equal(case.input, before)

    def test_nonfinite_is_counted_not_refused(self):
        out = run_candidate(load_candidate(f"{BROKEN}:nan_delta", convention="delta"), _case(5))
        assert out.nonfinite == 3 and np.isnan(out.delta).sum() == 3

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    def test_cuda_device(self):
        case = _case(6)
        seen = {}

        def port(input, truth, config):
            seen["device"] = input.device.type
            return load_candidate("parity").fn(input, truth, config)

        out = run_candidate(Candidate("cuda-port", port, "delta", device="cuda"), case)
        assert seen["device"] == "cuda"
        np.testing.assert_array_equal(out.delta, _darknet_delta(case))


class TestLayouts:
    @pytest.mark.parametrize("spec", ["parity", f"{PORTS}:as_delta", f"{PORTS}:as_grad", f"{PORTS}:as_loss"])
    def test_bnhwc_round_trip(self, spec):
        case = _case(7)
        out = run_candidate(load_candidate(spec, layout="bnhwc"), case)
        assert out.delta.shape == case.input.shape
        np.testing.assert_array_equal(out.delta, _darknet_delta(case))

    def test_bnhwc_candidate_receives_bnhwc(self):
        case = _case(8)
        c, n = case.config, case.config.n
        seen = {}

        def spy(input, truth, config):
            seen["input"] = input.detach().clone()
            return torch.zeros_like(input)

        run_candidate(Candidate("spy", spy, "grad", layout="bnhwc"), case)
        b, _, h, w = case.input.shape
        expected = case.input.reshape(b, n, 5 + c.classes, h, w).transpose(0, 1, 3, 4, 2)
        np.testing.assert_array_equal(seen["input"].numpy(), expected)


class TestNaive:
    def test_runs_as_a_loss_and_differs_from_darknet(self):
        case = _case(9, iou_loss="mse")
        out = run_candidate(load_candidate("naive"), case)
        assert (out.convention, out.detected) == ("loss", False)
        darknet = _darknet_delta(case)
        assert not np.allclose(out.delta, darknet, atol=1e-5, rtol=1e-4)
        # ...but its objectness on plain negatives is BCE's, darknet's -p.
        roles = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config).roles
        busy = ROLE_IGNORED | ROLE_TRUTH_THRESH | ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR
        plain = ((roles & busy) == 0).numpy()
        b, _, h, w = case.input.shape
        obj = lambda d: d.reshape(b, case.config.n, -1, h, w)[:, :, 4][plain]  # noqa: E731
        assert plain.sum() > 0
        np.testing.assert_allclose(obj(out.delta), obj(darknet), atol=1e-6, rtol=1e-5)


class TestRunErrors:
    def test_candidate_raises_names_type_message_and_own_line(self):
        msg = _error(f"{BROKEN}:raises")
        line = _line_of(FIXTURES / "broken.py", "boom in port")
        assert f"candidate '{BROKEN}:raises' raised when called: ValueError: boom in port" in msg
        assert f"broken.py:{line} in _helper" in msg

    def test_error_inside_torch_names_the_candidates_line(self):
        msg = _error(f"{BROKEN}:raises_inside_torch")
        line = _line_of(FIXTURES / "broken.py", "binary_cross_entropy_with_logits(input, truth)")
        assert "raised when called: ValueError" in msg
        assert f"broken.py:{line} in raises_inside_torch" in msg

    def test_inplace_on_grad_input_hints_at_convention(self):
        msg = _error(f"{BROKEN}:inplace_on_input")
        assert "leaf Variable" in msg and "declare it (--convention delta|grad)" in msg
        out = run_candidate(load_candidate(f"{BROKEN}:inplace_on_input", convention="delta"), _case())
        assert not out.delta.any()

    def test_backward_raises(self):
        msg = _error(f"{BROKEN}:failing_backward")
        line = _line_of(FIXTURES / "broken.py", "backward exploded")
        assert "raised in backward: RuntimeError: backward exploded" in msg
        assert f"broken.py:{line} in backward" in msg

    @pytest.mark.parametrize("convention", [None, "delta", "loss"])
    def test_non_tensor(self, convention):
        case = _case()
        b, _, h, w = case.input.shape
        n, e = case.config.n, 5 + case.config.classes
        msg = _error(f"{BROKEN}:returns_none", case, convention=convention)
        assert f"candidate '{BROKEN}:returns_none' returned NoneType, not a torch tensor" in msg
        assert f"layout 'nchw' [b, n*(5+c), h, w]: {(b, n * e, h, w)} (this candidate's)" in msg
        assert f"layout 'bnhwc' [b, n, h, w, 5+c]: {(b, n, h, w, e)}" in msg

    def test_tuple_hint(self):
        assert "a tuple or list: return only the loss" in _error(f"{BROKEN}:returns_tuple")

    @pytest.mark.parametrize("convention", [None, "grad"])
    def test_wrong_shape_states_both_layouts(self, convention):
        case = _case()
        b, c, h, w = case.input.shape
        n, e = case.config.n, 5 + case.config.classes
        msg = _error(f"{BROKEN}:wrong_shape", case, convention=convention)
        assert f"returned shape {(b, 1, h, w)}, expected the input's shape {(b, c, h, w)}" in msg
        assert f"layout 'nchw' [b, n*(5+c), h, w]: {(b, c, h, w)} (this candidate's)" in msg
        assert f"layout 'bnhwc' [b, n, h, w, 5+c]: {(b, n, h, w, e)}" in msg

    def test_other_layout_shape_suggests_the_layout(self):
        msg = _error(f"{BROKEN}:nchw_shaped", layout="bnhwc", convention="delta")
        assert "it is the 'nchw' shape: declare the layout (--layout nchw)" in msg
        assert "'bnhwc' [b, n, h, w, 5+c]" in msg and "(this candidate's)" in msg

    def test_scalar_under_a_declared_delta(self):
        msg = _error(f"{PORTS}:as_loss", convention="delta")
        assert "returned shape ()" in msg and "a scalar is a loss" in msg

    def test_full_tensor_under_a_declared_loss(self):
        msg = _error(f"{PORTS}:as_delta", convention="loss")
        assert "convention 'loss' expects a scalar" in msg

    @pytest.mark.parametrize("convention", [None, "delta"])
    def test_integer_dtype(self, convention):
        msg = _error(f"{BROKEN}:integer_delta", convention=convention)
        assert f"'{BROKEN}:integer_delta' returned dtype torch.int32" in msg and "floating-point" in msg

    @pytest.mark.parametrize("name", ["detached_loss", "unrelated_loss"])
    def test_loss_without_gradient(self, name):
        msg = _error(f"{BROKEN}:{name}")
        assert f"'{BROKEN}:{name}' returned a loss that does not depend on the input" in msg

    def test_undecidable_sign_asks_for_the_convention(self):
        msg = _error(f"{BROKEN}:all_zero")
        assert "cannot tell a delta from a gradient" in msg and "--convention delta|grad|loss" in msg
        out = run_candidate(load_candidate(f"{BROKEN}:all_zero", convention="grad"), _case())
        assert (out.convention, out.detected) == ("grad", False) and not out.delta.any()

    def test_missing_device(self):
        if torch.cuda.is_available():
            pytest.skip("CUDA is available")
        with pytest.raises(ParityError, match="device 'cuda' is not available"):
            run_candidate(load_candidate("parity", device="cuda"), _case())


class TestLoading:
    def test_dotted_callable(self):
        out = run_candidate(load_candidate(f"{PORTS}:Port.delta"), _case(10))
        assert out.convention == "delta"

    @pytest.mark.parametrize("relative", [True, False])
    def test_file_path(self, relative, monkeypatch):
        path = FIXTURES / "ports.py"
        if relative:
            monkeypatch.chdir(FIXTURES.parent)
            spec = "candidates_fixtures/ports.py:as_grad"
        else:
            spec = f"{path}:as_grad"
        cand = load_candidate(spec)
        assert cand.name == f"{path}:as_grad"  # absolute: a worker elsewhere re-loads the same file
        case = _case(11)
        out = run_candidate(cand, case)
        assert (out.convention, out.detected) == ("grad", True)
        np.testing.assert_array_equal(out.delta, _darknet_delta(case))

    def test_missing_module_is_named(self):
        with pytest.raises(ParityError, match=r"candidate module 'no_such_port_mod' not found"):
            load_candidate("no_such_port_mod:fn")
        with pytest.raises(ParityError, match=r"'candidates_fixtures.nope' not found \(no module named "
                                              r"'candidates_fixtures.nope'\)"):
            load_candidate("candidates_fixtures.nope:fn")

    def test_missing_dependency_is_named(self):
        with pytest.raises(ParityError, match=r"importing candidate module 'candidates_fixtures.bad_import' "
                                              r"failed: it imports 'no_such_dependency_for_parity'"):
            load_candidate("candidates_fixtures.bad_import:fn")

    def test_missing_attribute(self):
        with pytest.raises(ParityError, match=r"'candidates_fixtures.ports' has no attribute 'as_delt' "
                                              r"\(did you mean as_delta"):
            load_candidate(f"{PORTS}:as_delt")
        with pytest.raises(ParityError, match=r"'candidates_fixtures.ports:Port' has no attribute 'gradient'"):
            load_candidate(f"{PORTS}:Port.gradient")

    def test_not_callable(self):
        with pytest.raises(ParityError, match=r"NOT_CALLABLE is a int, not a callable"):
            load_candidate(f"{BROKEN}:NOT_CALLABLE")

    def test_missing_file(self, tmp_path):
        with pytest.raises(ParityError, match=r"candidate file '.*nowhere.py' not found"):
            load_candidate(f"{tmp_path}/nowhere.py:fn")

    def test_file_that_fails_to_import(self, tmp_path):
        bad = tmp_path / "syntax_port.py"
        bad.write_text("def fn(input, truth, config):\n    return (\n")
        with pytest.raises(ParityError, match=rf"importing candidate file .*syntax_port.py' raised SyntaxError: "
                                              rf".*\(at {re.escape(str(bad))}:\d+\)"):
            load_candidate(f"{bad}:fn")

    @pytest.mark.parametrize("spec", ["mymodule", "ports.py", ":fn", "mod:", "mod:path/x.py"])
    def test_malformed_spec(self, spec):
        with pytest.raises(ParityError, match=r"expected 'parity', 'naive', 'package.module:callable'"):
            load_candidate(spec)

    @pytest.mark.parametrize("kwargs, message", [
        ({"convention": "gradient"}, r"unknown convention 'gradient': expected one of delta, grad, loss or None"),
        ({"layout": "nhwc"}, r"unknown layout 'nhwc': expected one of nchw, bnhwc"),
        ({"device": "gpu:x"}, r"unknown device 'gpu:x'"),
    ])
    def test_bad_option_names(self, kwargs, message):
        with pytest.raises(ParityError, match=message):
            load_candidate("parity", **kwargs)
        with pytest.raises(ParityError, match=message):
            Candidate("x", lambda *a: None, **{"convention": None, **kwargs})


class TestDeterminism:
    @pytest.mark.parametrize("spec", ["parity", "naive", f"{PORTS}:as_loss", str(FIXTURES / "ports.py") + ":as_grad"])
    def test_same_spec_same_candidate(self, spec):
        first = load_candidate(spec, layout="bnhwc")
        again = load_candidate(first.spec()[0], convention=first.spec()[1], layout=first.spec()[2],
                               device=first.spec()[3])
        assert again == first and again.fn is first.fn
        assert first.spec() == (first.name, first.convention, "bnhwc", "cpu", first.framework, False)
        assert pickle.loads(pickle.dumps(first)) == first

    def test_worker_process_reloads_by_spec(self):
        case = _case(12)
        cands = [load_candidate(f"{PORTS}:as_grad"), load_candidate(str(FIXTURES / "ports.py") + ":as_loss")]
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            outs = list(pool.map(run_candidate, cands, [case] * len(cands)))
        for out, conv in zip(outs, ("grad", "loss")):
            assert out.convention == conv
            np.testing.assert_array_equal(out.delta, _darknet_delta(case))

"""DarknetYoloLoss: darknet's -delta through autograd, several heads, targets, layouts."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.tolerance import within
from parity.cfg import parse_cfg
from parity.config import YoloConfig
from parity.errors import InputError
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.torch import DarknetYoloLoss, darknet_yolo_cost, rows_from_targets, targets_from_rows, yolo_forward

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cfg"


def _case(seed: int = 5, flavor: str = "alexeyab"):
    config = random_config(np.random.default_rng([11, seed]), flavor)
    return random_case(seed, config, flavor=flavor)


class TestAutogradContract:
    @pytest.mark.parametrize("seed", range(6))
    def test_grad_is_exactly_minus_delta(self, seed):
        case = _case(seed)
        head = torch.from_numpy(case.input).requires_grad_()
        loss = DarknetYoloLoss(case.config)(head, torch.from_numpy(case.truth))
        loss.backward()
        run = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config)
        assert torch.equal(head.grad, -run.delta)
        assert loss.item() == run.stats.cost.item()

    @pytest.mark.parametrize("seed", range(3))
    def test_running_cost_changes_the_value_only(self, seed):
        """running_cost=False: the float64 sum (close to darknet's), the same gradient."""
        case = _case(seed)
        grads, values = [], []
        for running in (None, True, False):
            head = torch.from_numpy(case.input).requires_grad_()
            loss = DarknetYoloLoss(case.config, running_cost=running)(head, torch.from_numpy(case.truth))
            loss.backward()
            grads.append(head.grad)
            values.append(loss.item())
        assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])
        assert values[0] == values[1]
        assert values[2] == pytest.approx(values[0], rel=1e-3, abs=1e-6)

    def test_grad_matches_c_reference_delta(self):
        case = _case(8)
        head = torch.from_numpy(case.input).requires_grad_()
        DarknetYoloLoss(case.config)(head, torch.from_numpy(case.truth)).backward()
        ref = run_reference(case.config, case.input, case.truth)
        assert within(-head.grad.numpy(), ref.delta).all()
        assert ((head.grad.numpy() != 0) == (ref.delta != 0)).all()

    def test_grad_scales_with_upstream_gradient(self):
        # d(k*loss)/d head = -k*delta: the Function honours grad_output.
        case = _case(3)
        head = torch.from_numpy(case.input).requires_grad_()
        (3.0 * DarknetYoloLoss(case.config)(head, torch.from_numpy(case.truth))).backward()
        delta = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config).delta
        torch.testing.assert_close(head.grad, -3.0 * delta)

    def test_value_is_darknet_cost_not_the_objective(self):
        # With mse the reported cost is |delta|^2; were it the objective, its gradient would
        # be -2*delta*(d delta/d head), not the -delta darknet applies.
        case = _case(2)
        config = case.config.replace(iou_loss="mse")
        cost, delta, _ = darknet_yolo_cost(torch.from_numpy(case.input).requires_grad_(),
                                           torch.from_numpy(case.truth), config)
        assert cost.requires_grad and not delta.requires_grad
        assert cost.item() == pytest.approx(float((delta.double() ** 2).sum()), rel=1e-5)

    def test_gpu_backward_scales_gradient_only_when_asked(self):
        case = _case(4)
        config = case.config.replace(delta_normalizer=0.25)
        g = []
        for backward, loss_scale in (("cpu", 1.0), ("gpu", 1.0), ("gpu", 8.0), ("cpu", 8.0)):
            head = torch.from_numpy(case.input).requires_grad_()
            loss = DarknetYoloLoss(config, backward=backward, loss_scale=loss_scale)
            loss(head, torch.from_numpy(case.truth)).backward()
            g.append(head.grad)
        assert g[0].count_nonzero() > 0
        torch.testing.assert_close(g[1], 0.25 * g[0], rtol=0, atol=0)     # darknet's GPU backward
        torch.testing.assert_close(g[2], 2.0 * g[0], rtol=0, atol=0)      # loss_scale 8 * delta_normalizer 0.25
        torch.testing.assert_close(g[3], g[0], rtol=0, atol=0)            # the CPU backward ignores both

    def test_default_is_the_cpu_backward_and_bad_choices_fail_at_construction(self):
        assert inspect.signature(DarknetYoloLoss).parameters["backward"].default == "cpu"
        case = _case(4)
        with pytest.raises(InputError, match="backward 'cuda'"):
            DarknetYoloLoss(case.config, backward="cuda")
        with pytest.raises(InputError, match="loss_scale"):
            DarknetYoloLoss(case.config, backward="gpu", loss_scale=float("nan"))


def _small_cfg(name: str, size: int) -> str:
    text = (FIXTURES / name).read_text()
    text = re.sub(r"(?m)^\s*width\s*=.*$", f"width={size}", text)
    return re.sub(r"(?m)^\s*height\s*=.*$", f"height={size}", text)


class TestSeveralHeads:
    def test_yolov4_three_heads_each_with_its_own_config(self):
        text = _small_cfg("yolov4.cfg", 128)
        net = parse_cfg(text)
        layers = net.yolo_layers
        assert [(l.grid_w, l.grid_h) for l in layers] == [(16, 16), (8, 8), (4, 4)]
        assert [l.config.scale_x_y for l in layers] == pytest.approx([1.2, 1.1, 1.05])
        rng = np.random.default_rng(0)
        heads = [torch.from_numpy(rng.normal(0, 2, (2, l.config.channels, l.grid_h, l.grid_w)).astype(np.float32))
                 .requires_grad_() for l in layers]
        rows = torch.tensor([[0, 3, 0.3, 0.4, 0.2, 0.3], [0, 7, 0.7, 0.2, 0.6, 0.5], [1, 1, 0.5, 0.5, 0.05, 0.04]])
        loss_fn = DarknetYoloLoss(text)
        loss = loss_fn(heads, rows)
        loss.backward()
        truth = targets_from_rows(rows, 2, 200).numpy()
        total = 0.0
        for head, layer in zip(heads, layers):
            ref = run_reference(layer.config, head.detach().numpy(), truth)
            assert within(-head.grad.numpy(), ref.delta).all()
            assert ((head.grad.numpy() != 0) == (ref.delta != 0)).all()
            total += ref.stats["cost"]
        assert loss.item() == pytest.approx(total, rel=1e-5)
        assert len(loss_fn.last_stats) == 3

    def test_wrong_number_of_heads_is_refused(self):
        loss_fn = DarknetYoloLoss(_small_cfg("yolov4.cfg", 128))
        with pytest.raises(InputError, match="2 head outputs for 3"):
            loss_fn([torch.zeros(1, 255, 16, 16), torch.zeros(1, 255, 8, 8)], torch.zeros(0, 6))


class TestTargets:
    def test_rows_to_darknet_truth(self):
        rows = torch.tensor([[1, 4, 0.1, 0.2, 0.3, 0.4], [0, 2, 0.5, 0.6, 0.7, 0.8], [1, 0, 0.9, 0.8, 0.1, 0.1]])
        truth = targets_from_rows(rows, 2, 3)
        # image 0: its one box; image 1: its two boxes in row order; x, y, w, h, class, track 0
        expected = torch.zeros(2, 3, 6)
        expected[0, 0] = torch.tensor([0.5, 0.6, 0.7, 0.8, 2, 0])
        expected[1, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4, 4, 0])
        expected[1, 1] = torch.tensor([0.9, 0.8, 0.1, 0.1, 0, 0])
        torch.testing.assert_close(truth, expected)
        back = rows_from_targets(truth, YoloConfig(classes=5, max_boxes=3))
        torch.testing.assert_close(back[torch.argsort(back[:, 0], stable=True)], rows[[1, 0, 2]])

    def test_more_boxes_than_max_are_dropped_with_a_warning(self):
        rows = torch.tensor([[0, 0, 0.1 * k + 0.05, 0.5, 0.1, 0.1] for k in range(5)])
        with pytest.warns(UserWarning, match="beyond max=3"):
            truth = targets_from_rows(rows, 1, 3)
        assert truth.shape == (1, 3, 6) and float(truth[0, 2, 0]) == pytest.approx(0.25)

    @pytest.mark.parametrize("rows,message", [
        (torch.zeros(3, 5), r"expected \[N, 6\]"),
        (torch.tensor([[2.0, 0, 0.5, 0.5, 0.1, 0.1]]), r"image indices must lie in \[0, 2\)"),
    ])
    def test_bad_rows_are_refused(self, rows, message):
        with pytest.raises(InputError, match=message):
            targets_from_rows(rows, 2)


class TestLayouts:
    def test_bnhwc_layout_gives_the_same_loss_and_gradient(self):
        case = _case(6)
        cfg = case.config
        b, _, h, w = case.input.shape
        nchw = torch.from_numpy(case.input).requires_grad_()
        bnhwc = torch.from_numpy(case.input).view(b, cfg.n, 5 + cfg.classes, h, w).permute(0, 1, 3, 4, 2)
        bnhwc = bnhwc.contiguous().requires_grad_()
        truth = torch.from_numpy(case.truth)
        l1 = DarknetYoloLoss(cfg)(nchw, truth)
        l2 = DarknetYoloLoss(cfg, layout="bnhwc")(bnhwc, truth)
        l1.backward()
        l2.backward()
        assert l1.item() == l2.item()
        torch.testing.assert_close(bnhwc.grad.permute(0, 1, 4, 2, 3).reshape(b, -1, h, w), nchw.grad)

    def test_unknown_layout_is_refused(self):
        with pytest.raises(InputError, match="layout"):
            DarknetYoloLoss(_case(1).config, layout="nhwc")


def test_a_non_contiguous_head_gives_the_same_result():
    # A head that is a permuted view (a port's bnhwc tensor turned back) must not keep its strides inside.
    import numpy as np

    from parity.generate import random_case, random_config

    case = random_case(4, random_config(np.random.default_rng([21, 4]), "alexeyab"))
    x = torch.from_numpy(case.input)
    strided = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not strided.is_contiguous()
    a = yolo_forward(x, torch.from_numpy(case.truth), case.config)
    b = yolo_forward(strided, torch.from_numpy(case.truth), case.config)
    assert torch.equal(a.delta, b.delta) and torch.equal(a.output, b.output)

"""JAX and TensorFlow candidates (issue 10): their arrays in, their own gradient, darknet's delta out.

JAX runs in CI (.ci/run installs it); TensorFlow is tested where it is installed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.candidates import Candidate, parity_delta, run_candidate
from parity.frameworks import detect_framework
from parity.generate import random_case, random_config
from parity.suite import RunOptions, compare_case

jax = pytest.importorskip("jax")
jnp = jax.numpy


def _case(seed=2):
    config = random_config(np.random.default_rng([21, seed]), "alexeyab")
    return random_case(seed, config)


def _bce_jax(x, truth, config):
    """Textbook objectness: BCE toward 0 on every slot (sum)."""
    b, _, h, w = x.shape
    p = x.reshape(b, config.n, 5 + config.classes, h, w)[:, :, 4]
    return jnp.sum(jnp.logaddexp(0.0, p))


def _bce_torch(x, truth, config):
    b, _, h, w = x.shape
    p = x.reshape(b, config.n, 5 + config.classes, h, w)[:, :, 4]
    return torch.nn.functional.softplus(p).sum()


def _port_delta_as_jax(x, truth, config):
    d = parity_delta(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(truth)), config)
    return jnp.asarray(d.numpy())


def test_the_framework_is_detected_from_the_callables_module():
    assert detect_framework(_bce_jax) == "jax"
    assert detect_framework(_bce_torch) == "torch"


def test_a_jax_loss_is_differentiated_with_jax_grad_like_the_same_loss_in_torch():
    case = _case()
    jax_out = run_candidate(Candidate("bce-jax", _bce_jax, "loss"), case)
    torch_out = run_candidate(Candidate("bce-torch", _bce_torch, "loss"), case)
    assert jax_out.convention == "loss"
    np.testing.assert_allclose(jax_out.delta, torch_out.delta, rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(jax_out.delta) > 0


def test_an_undeclared_jax_scalar_is_read_as_a_loss():
    out = run_candidate(Candidate("bce-jax", _bce_jax), _case())
    assert out.convention == "loss" and out.detected


def test_a_jax_candidate_returning_darknets_delta_agrees():
    res = compare_case(_case(3), RunOptions(), candidate=Candidate("port-as-jax", _port_delta_as_jax, "delta"))
    assert res.passed, res.causes


def test_a_jax_candidate_in_bnhwc_layout():
    case = _case(4)

    def bnhwc(x, truth, config):
        assert x.ndim == 5 and x.shape[-1] == 5 + config.classes
        d = parity_delta(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(truth)), config)
        return jnp.asarray(d.numpy())
    res = compare_case(case, RunOptions(), candidate=Candidate("bnhwc-jax", bnhwc, "delta", "bnhwc"))
    assert res.passed


def test_a_jax_candidate_with_the_wrong_shape_is_named():
    from parity.errors import ParityError

    with pytest.raises(ParityError, match="returned shape"):
        run_candidate(Candidate("bad", lambda x, t, c: jnp.zeros((2, 2)), "delta", framework="jax"), _case())


def test_a_tensorflow_loss_matches_the_torch_one():
    tf = pytest.importorskip("tensorflow")

    def bce_tf(x, truth, config):
        b, _, h, w = x.shape
        p = tf.reshape(x, (b, config.n, 5 + config.classes, h, w))[:, :, 4]
        return tf.reduce_sum(tf.math.softplus(p))
    case = _case()
    tf_out = run_candidate(Candidate("bce-tf", bce_tf, "loss", framework="tf"), case)
    torch_out = run_candidate(Candidate("bce-torch", _bce_torch, "loss"), case)
    np.testing.assert_allclose(tf_out.delta, torch_out.delta, rtol=1e-5, atol=1e-7)

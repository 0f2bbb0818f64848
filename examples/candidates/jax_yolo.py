"""A JAX candidate as a porter writes one: a textbook YOLO loss over one head, jax.grad does the rest.

darknet-parity run --candidate examples/candidates/jax_yolo.py:loss --profile yolov3 --cases 2
"""
import jax.numpy as jnp


def loss(x, truth, config):
    """Objectness BCE toward 0 everywhere (no positives, no ignore): the simplest port there is."""
    b, _, h, w = x.shape
    p = x.reshape(b, config.n, 5 + config.classes, h, w)[:, :, 4]
    return jnp.sum(jnp.logaddexp(0.0, p)) * config.obj_normalizer

"""Hostile candidates for tests/test_chaos.py: each one attacks the runner a different way."""
from __future__ import annotations

import ctypes
import os
import sys
import time

import torch

from parity.candidates import parity_delta as yolo_delta


def good(x, truth, config):
    return yolo_delta(x, truth, config)


def sys_exit_zero(x, truth, config):
    sys.exit(0)


def os_exit_zero(x, truth, config):
    os._exit(0)


def os_exit_three(x, truth, config):
    os._exit(3)


def segfault(x, truth, config):
    ctypes.string_at(0)


def sleeps(x, truth, config):
    time.sleep(3600)


def keyboard_interrupt(x, truth, config):
    raise KeyboardInterrupt


def generator_exit(x, truth, config):
    raise GeneratorExit


def sparse(x, truth, config):
    return yolo_delta(x, truth, config).to_sparse()


def meta(x, truth, config):
    return torch.empty(x.shape, device="meta")


def out_of_memory(x, truth, config):
    raise MemoryError("cannot allocate 4 TiB")


def kills_second_worker_case(x, truth, config):
    """Dies (SIGKILL) on images with a truth in the first row of image 0 above x=0.5; else correct."""
    if float(truth[0, 0, 0]) > 0.5:
        os.kill(os.getpid(), 9)
    return yolo_delta(x, truth, config)

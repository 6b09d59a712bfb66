"""`device: cuda` is chosen per worker; where it cannot be honoured the worker fails at start
with a message that says what to install, not deep inside a training step."""
import importlib.util

import pytest

from downpour.model import backend
from downpour.ps import config as job_config
from downpour.worker.job import build_job, select_device
from tests.conftest import CONFIGS

no_cupy = importlib.util.find_spec("cupy") is None


def test_cpu_is_the_default_and_selects_numpy():
    cfg = job_config.load(CONFIGS / "digits_logreg.yaml")
    assert cfg["device"] == "cpu"
    select_device("cpu")
    import numpy
    assert backend.default() is numpy


@pytest.mark.skipif(not no_cupy, reason="CuPy is installed here: the missing-CuPy error cannot be shown")
def test_cuda_without_cupy_fails_at_start_naming_the_install():
    cfg = job_config.load(CONFIGS / "digits_logreg.yaml", ["device=cuda"])
    with pytest.raises(RuntimeError, match=r"pip install 'downpour\[cupy\]'"):
        build_job(cfg)
    select_device("cpu")


def test_an_unknown_device_is_a_config_error():
    with pytest.raises(job_config.ConfigError, match="device"):
        job_config.load(CONFIGS / "digits_logreg.yaml", ["device=tpu"])

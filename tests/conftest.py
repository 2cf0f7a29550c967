"""Shared fixtures: torch is a test dependency; under CI=true its absence fails the run."""

import os

import pytest


@pytest.fixture(scope="session")
def torch():
    try:
        import torch
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("torch is a test dependency and must be installed under CI=true")
        pytest.skip("torch is not installed (pip install -e '.[test]')")
    torch.manual_seed(0)
    return torch


@pytest.fixture(scope="session")
def onnxruntime():
    """onnxruntime (with onnx): the ``onnx`` extra, a test dependency; as torch under CI."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("onnx and onnxruntime are test dependencies and must be installed "
                        "under CI=true")
        pytest.skip("onnx or onnxruntime is not installed (pip install -e '.[test]')")
    return onnxruntime

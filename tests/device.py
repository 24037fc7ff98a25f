"""The one place that decides which device the tests run on: MMTOK_TEST_DEVICE=cpu (default) or cuda.

`MMTOK_TEST_DEVICE=cuda python -m pytest -q` runs the suite on the GPU (float32 wherever a test compares exact
tokens); without a CUDA GPU that session is skipped as a whole (conftest), never quietly run on the CPU.
CLI calls that name no --device / --dtype get them from MMTOK_DEVICE / MMTOK_DTYPE, which conftest sets.
"""

import os
from typing import Any

import pytest
import torch

CHOICES = ("cpu", "cuda")
TEST_DEVICE = os.environ.get("MMTOK_TEST_DEVICE", "").strip().lower() or "cpu"
ON_CUDA = TEST_DEVICE == "cuda"
NO_CUDA_REASON = "MMTOK_TEST_DEVICE=cuda, but PyTorch sees no CUDA GPU here"
# Tests about CPU-only behaviour (RSS, error messages for a device this machine lacks) skip on CUDA with this.
cpu_only = pytest.mark.skipif(ON_CUDA, reason="checks CPU-only behaviour; MMTOK_TEST_DEVICE=cuda")


def check_choice() -> str | None:
    """An error message when MMTOK_TEST_DEVICE names neither cpu nor cuda."""
    if TEST_DEVICE not in CHOICES:
        return f"MMTOK_TEST_DEVICE={TEST_DEVICE!r}: use one of {', '.join(CHOICES)}"
    return None


def cuda_missing() -> bool:
    return ON_CUDA and not torch.cuda.is_available()


def to_device(x: Any) -> Any:
    """A reference model or its processor inputs (BatchFeature, dict or tensor) on the engine's device."""
    if isinstance(x, dict) and not hasattr(x, "to"):
        return {k: to_device(v) for k, v in x.items()}
    return x.to(TEST_DEVICE) if hasattr(x, "to") else x

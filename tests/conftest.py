import os

import numpy as np
import pytest
from PIL import Image

# Tests never touch the network: a hub id must fail fast, from the cache alone.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from intra-op threads, and spinning OpenMP threads slow to a crawl when
# the CPU is shared (CI runners, parallel jobs). Set before torch loads; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from .device import NO_CUDA_REASON, ON_CUDA, TEST_DEVICE, check_choice, cuda_missing

# CLI calls that name no --device / --dtype run where the engines run, in float32 (exact tokens; test_bf16 covers
# bfloat16). Subprocesses inherit these.
os.environ["MMTOK_DEVICE"] = TEST_DEVICE
os.environ["MMTOK_DTYPE"] = "float32"
if ON_CUDA and not cuda_missing():
    import torch

    # float32 on CUDA means float32: TF32 convolutions (cuDNN's default) would change tokens against references.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def pytest_configure(config):
    if (message := check_choice()) is not None:
        raise pytest.UsageError(message)


def pytest_report_header(config):
    return f"mmtok test device: {TEST_DEVICE} (MMTOK_TEST_DEVICE)"


def pytest_collection_modifyitems(config, items):
    if cuda_missing():
        skip = pytest.mark.skip(reason=NO_CUDA_REASON)
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """A random-weight LLaVA checkpoint folder, built offline and loaded like a real one."""
    from mmtok_cli.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_llava):
    from mmtok_cli.engine import Engine

    return Engine(str(tiny_llava), device=TEST_DEVICE, dtype="float32")


def noise_image(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "noise.png"
    noise_image(1).save(path)
    return path

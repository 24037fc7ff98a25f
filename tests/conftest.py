import os

import numpy as np
import pytest
from PIL import Image

# Tests never touch the network: a hub id must fail fast, from the cache alone.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from intra-op threads, and spinning OpenMP threads slow to a crawl when
# the CPU is shared (CI runners, parallel jobs). Set before torch loads; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """A random-weight LLaVA checkpoint folder, built offline and loaded like a real one."""
    from mmtok_cli.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_llava):
    from mmtok_cli.engine import Engine

    return Engine(str(tiny_llava), device="cpu", dtype="float32")


def noise_image(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "noise.png"
    noise_image(1).save(path)
    return path

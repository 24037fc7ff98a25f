"""Real-size architectures build (on the meta device: no memory) with the published parameter counts."""

import pytest
import torch

from mmtok_cli.archs import ARCHS, build_config
from mmtok_cli.models import adapter_class

# Parameter counts of the published checkpoints, in billions.
PUBLISHED = {
    "llava-v1.6-vicuna-7b": 7.06,
    "llava-v1.6-vicuna-13b": 13.35,
    "qwen2.5-vl-3b": 3.75,
    "qwen2.5-vl-7b": 8.29,
    "qwen3-vl-8b": 8.77,
}


@pytest.mark.parametrize("name", list(ARCHS))
def test_real_architecture_builds_with_its_published_size(name):
    config = build_config(name)
    model_class = adapter_class(config.model_type).model_class()
    with torch.device("meta"):
        model = model_class(config)
    params = sum(p.numel() for p in model.parameters())
    assert params / 1e9 == pytest.approx(PUBLISHED[name], abs=0.01)


def test_unknown_architecture():
    with pytest.raises(KeyError, match="known: llava-v1.6-vicuna-7b"):
        build_config("llava-v9")

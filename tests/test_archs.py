"""Real-size architectures build (on the meta device: no memory) with the published parameter counts."""

import pytest
import torch

from mmtok_cli.archs import ARCHS, build_config, random_model
from mmtok_cli.models import adapter_class

# Parameter counts of the published checkpoints, in billions.
PUBLISHED = {
    "llava-1.5-7b": 7.06,
    "llava-1.5-13b": 13.35,
    "llava-v1.6-vicuna-7b": 7.06,
    "llava-v1.6-vicuna-13b": 13.35,
    "qwen2.5-vl-3b": 3.75,
    "qwen2.5-vl-7b": 8.29,
    "qwen3-vl-8b": 8.77,
    "llava-onevision-qwen2-7b": 8.03,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_real_architecture_builds_with_its_published_size(name):
    config = build_config(name)
    model_class = adapter_class(config.model_type).model_class()
    with torch.device("meta"):
        model = model_class(config)
    params = sum(p.numel() for p in model.parameters())
    assert params / 1e9 == pytest.approx(PUBLISHED[name], abs=0.01)


@pytest.mark.parametrize("name", list(ARCHS))
def test_random_model_builds_every_preset_in_the_asked_dtype_with_sdpa(name):
    # On the meta device: the same code path as on a GPU, without the memory.
    config = build_config(name)
    model = random_model(adapter_class(config.model_type).model_class(), config, device="meta", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not model.training
    assert model.config._attn_implementation == "sdpa"


def test_every_preset_but_the_cpu_small_ones_is_a_published_model():
    assert all(name.startswith("cpu-small") for name in set(ARCHS) - set(PUBLISHED))


def test_cpu_small_has_real_widths_and_few_layers():
    small, real = build_config("cpu-small"), build_config("llava-1.5-7b")
    for part in ("vision_config", "text_config"):
        a, b = getattr(small, part), getattr(real, part)
        assert (a.hidden_size, a.intermediate_size, a.num_attention_heads) == (
            b.hidden_size, b.intermediate_size, b.num_attention_heads)
    assert small.text_config.vocab_size == real.text_config.vocab_size
    assert (small.vision_config.num_hidden_layers, small.text_config.num_hidden_layers) == (2, 2)


def test_unknown_architecture():
    with pytest.raises(KeyError, match="known: llava-1.5-7b"):
        build_config("llava-v9")


def test_cpu_small_onevision_has_real_widths_and_few_layers():
    small, real = build_config("cpu-small-onevision"), build_config("llava-onevision-qwen2-7b")
    for part in ("vision_config", "text_config"):
        a, b = getattr(small, part), getattr(real, part)
        assert (a.hidden_size, a.intermediate_size, a.num_attention_heads) == (
            b.hidden_size, b.intermediate_size, b.num_attention_heads)
    assert small.image_grid_pinpoints == real.image_grid_pinpoints and small.text_config.vocab_size == 152128
    assert (small.vision_config.num_hidden_layers, small.text_config.num_hidden_layers) == (2, 2)

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
    # 12,187,325,040 on meta; its LLM part differs from Keras-Hub's gemma3_12b_text preset (11,765,788,416)
    # by exactly the 64 extra rows of the vision checkpoint's 262,208-token vocabulary (64 x 3840)
    "gemma-3-12b": 12.19,
    "llava-onevision-qwen2-7b": 8.03,
}
# Qwen3.5-9B's safetensors hold 9.653B parameters, 0.243B of them the multi-token-prediction head (mtp.*: one
# full-attention decoder layer, its 2h -> h input projection and norms) that transformers does not build.
PUBLISHED["qwen3.5-9b"] = 9.41
PUBLISHED["internvl3-8b"] = 7.94


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


def test_cpu_small_gemma3_has_real_widths_and_one_layer_of_each_attention():
    small, real = build_config("cpu-small-gemma3"), build_config("gemma-3-12b")
    for part in ("vision_config", "text_config"):
        a, b = getattr(small, part), getattr(real, part)
        assert (a.hidden_size, a.intermediate_size, a.num_attention_heads) == (
            b.hidden_size, b.intermediate_size, b.num_attention_heads)
    assert (small.text_config.vocab_size, small.mm_tokens_per_image) == (real.text_config.vocab_size, 256)
    assert (small.vision_config.num_hidden_layers, small.text_config.num_hidden_layers) == (2, 2)
    assert small.text_config.layer_types == ["sliding_attention", "full_attention"]


def test_unknown_architecture():
    with pytest.raises(KeyError, match="known: llava-1.5-7b"):
        build_config("llava-v9")


def test_cpu_small_qwen35_has_real_widths_and_both_layer_kinds():
    small, real = build_config("cpu-small-qwen3.5"), build_config("qwen3.5-9b")
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "head_dim", "vocab_size",
            "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim")
    assert all(getattr(small.text_config, k) == getattr(real.text_config, k) for k in keys)
    assert small.vision_config.to_dict() == {**real.vision_config.to_dict(), "depth": 2}
    assert small.text_config.layer_types == ["linear_attention", "full_attention"]
    assert real.text_config.layer_types == (["linear_attention"] * 3 + ["full_attention"]) * 8


def test_cpu_small_onevision_has_real_widths_and_few_layers():
    small, real = build_config("cpu-small-onevision"), build_config("llava-onevision-qwen2-7b")
    for part in ("vision_config", "text_config"):
        a, b = getattr(small, part), getattr(real, part)
        assert (a.hidden_size, a.intermediate_size, a.num_attention_heads) == (
            b.hidden_size, b.intermediate_size, b.num_attention_heads)
    assert small.image_grid_pinpoints == real.image_grid_pinpoints and small.text_config.vocab_size == 152128
    assert (small.vision_config.num_hidden_layers, small.text_config.num_hidden_layers) == (2, 2)


@pytest.mark.parametrize("small,real", [("cpu-small-qwen2.5", "qwen2.5-vl-7b"), ("cpu-small-qwen3-vl", "qwen3-vl-8b")])
def test_cpu_small_video_presets_have_real_widths_and_two_blocks_of_each(small, real):
    small, real = build_config(small), build_config(real)
    for part, keys in (("vision_config", ("hidden_size", "intermediate_size", "num_heads", "patch_size",
                                          "out_hidden_size")),
                       ("text_config", ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"))):
        a, b = getattr(small, part), getattr(real, part)
        assert all(getattr(a, k) == getattr(b, k) for k in keys), part
    assert (small.vision_config.depth, small.text_config.num_hidden_layers) == (2, 2)
    assert getattr(small.vision_config, "fullatt_block_indexes", [1]) == [1]  # Qwen2.5-VL: a windowed block, a full
    assert getattr(small.vision_config, "deepstack_visual_indexes", [0, 1]) == [0, 1]

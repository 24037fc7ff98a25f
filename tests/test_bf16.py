"""bfloat16 runs of every family on the test device (MMTOK_TEST_DEVICE; the GPU's default dtype is bf16).

The exact-token tests run in float32; these check that a bf16 engine runs end to end on a batch of two images
of different sizes (finite bf16 vision tokens, the budget kept, answers of the right shape) and that its
unpruned run gives the ids transformers' own bf16 `generate` gives on the same inputs.
"""

import pytest
import torch

from mmtok_cli.tiny import BUILDERS, build_tiny_qwen_vl

from .conftest import noise_image
from .device import TEST_DEVICE

# Every family with a tiny builder, plus Qwen3.5 MoE (its own model class, built by the Qwen builder).
FAMILY_BUILDERS = {"qwen3.5-moe": lambda path, **kw: build_tiny_qwen_vl(path, version="3.5-moe", **kw), **BUILDERS}
SIZES = [(160, 120), (90, 200)]
QUESTIONS = ["What colour is the cat on the sofa?", "Is there a red circle?"]
K = 4
NEW = 4


@pytest.fixture(scope="module", params=sorted(FAMILY_BUILDERS))
def bf16(request, tmp_path_factory):
    from mmtok_cli.engine import Engine

    family = request.param
    path = FAMILY_BUILDERS[family](tmp_path_factory.mktemp("bf16") / family, seed=1)  # a seed whose every model answers by the image
    engine = Engine(str(path), device=TEST_DEVICE, dtype="bfloat16")
    assert engine.adapter.family == family and engine.dtype == torch.bfloat16
    engine.path = path
    return engine, [noise_image(60 + i, size) for i, size in enumerate(SIZES)]


def test_vision_tokens_are_finite_bf16(bf16):
    engine, images = bf16
    with torch.inference_mode():
        tokens = engine.adapter.encode(engine.prepare(images, QUESTIONS))
    assert tokens.vision.dtype == tokens.features.dtype == torch.bfloat16
    assert tokens.vision.device.type == tokens.features.device.type == TEST_DEVICE
    assert all(n > K for n in tokens.counts)
    for row, n in enumerate(tokens.counts):
        assert torch.isfinite(tokens.vision[row, :n]).all() and torch.isfinite(tokens.features[row, :n]).all()
        assert tokens.vision[row, :n].abs().sum() > 0  # real tokens, not padding


@pytest.mark.parametrize("method", ["mmtok", "full"])
def test_a_batch_of_two_sizes_keeps_the_budget_and_answers(bf16, method):
    engine, images = bf16
    answers = engine.run(images, QUESTIONS, method=method, tokens=K, max_new_tokens=3)
    vocab = engine.adapter.model.get_output_embeddings().weight.shape[0]
    assert len(answers) == 2
    for answer in answers:
        assert isinstance(answer.answer, str)
        assert answer.output_ids and all(isinstance(t, int) and 0 <= t < vocab for t in answer.output_ids)
        assert answer.vision_kept == (K if method == "mmtok" else answer.vision_total)
        (kept,) = answer.kept_indices
        assert len(kept) == answer.vision_kept and kept == sorted(set(kept))
        assert all(0 <= i < answer.vision_total for i in kept)
        # (LLaVA-NeXT/-OneVision also drop their row newlines when pruning, hence no exact count here)
        assert (answer.prompt_pruned == answer.prompt_unpruned) if method == "full" else (
            answer.prompt_pruned <= answer.prompt_unpruned - answer.vision_total + K)


def test_full_equals_transformers_own_bf16_generate(bf16):
    """The checkpoint loaded by transformers alone in bf16, `generate` on the processor's inputs for the same
    batch: the engine's unpruned run gives the same ids, row by row."""
    from transformers import AutoModelForImageTextToText

    engine, images = bf16
    model = AutoModelForImageTextToText.from_pretrained(engine.path, dtype=torch.bfloat16).to(TEST_DEVICE).eval()
    assert type(model) is type(engine.adapter.model) and model.dtype == torch.bfloat16
    inputs = engine.prepare(images, QUESTIONS).inputs
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    answers = engine.run(images, QUESTIONS, method="full", max_new_tokens=NEW, ignore_eos=True)
    width = inputs["input_ids"].shape[1]
    assert [a.output_ids for a in answers] == out[:, width:].tolist()
    # the ids depend on the image, so matching them means something (a degenerate tiny model's would not)
    swapped = engine.run(images[::-1], QUESTIONS, method="full", max_new_tokens=NEW, ignore_eos=True)
    assert [a.output_ids for a in swapped] != [a.output_ids for a in answers]

"""The LLaVA-1.5 path on a tiny random checkpoint, against plain transformers and a hand-built reference."""

import time

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from . import reference
from .checks import ROUNDING_MS, StageClocks
from .conftest import noise_image
from .device import TEST_DEVICE, to_device

QUESTION = "What colour is the cat on the sofa?"
NEW = 8


@pytest.fixture(scope="module")
def plain(tiny_llava):
    """The checkpoint loaded independently of mmtok, straight through transformers."""
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava).eval().to(TEST_DEVICE)
    return model, AutoProcessor.from_pretrained(tiny_llava)


def _processor_inputs(processor, image, question):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return to_device(processor(images=[image], text=[prompt], return_tensors="pt"))


def _until_eos(ids, eos):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.mark.parametrize("method,k", [("full", 64), ("mmtok", 64), ("mmtok", 500)])
def test_unpruned_equals_plain_generate(engine, plain, method, k):
    model, processor = plain
    image = noise_image(2)
    inputs = _processor_inputs(processor, image, QUESTION)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    expected = _until_eos(out[0, inputs["input_ids"].shape[1] :].tolist(), model.generation_config.eos_token_id)

    answer = engine.ask(image, QUESTION, method=method, tokens=k, max_new_tokens=NEW)
    assert answer.output_ids == expected
    assert answer.vision_kept == answer.vision_total == 64
    assert answer.kept_indices == [list(range(64))]
    assert answer.prompt_pruned == answer.prompt_unpruned == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("k", [1, 8, 40])
def test_pruned_run_equals_hand_built_reference(engine, plain, k):
    model, processor = plain
    image = noise_image(3)
    inputs = _processor_inputs(processor, image, QUESTION)
    with torch.no_grad():
        # features -> selection, written out without mmtok code
        hidden = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        U = hidden[-2][0, 1:]  # penultimate layer, CLS dropped
        V = model.model.multi_modal_projector(U)
        word_ids = processor.tokenizer(
            ["colour", "cat", "on", "sofa"], is_split_into_words=True, add_special_tokens=False
        )["input_ids"]
        embed = model.get_input_embeddings()
        T = embed(torch.tensor(word_ids, device=TEST_DEVICE))
        kept = reference.mmtok_indices(V, U, T, k)
        # shortened input: the image's run of 64 embeddings replaced by the k kept ones
        ids = inputs["input_ids"][0]
        run = (ids == model.config.image_token_id).nonzero().flatten()
        row = embed(ids)
        short = torch.cat([row[: run[0]], V[kept], row[run[-1] + 1 :]])[None]
        out = model.generate(
            inputs_embeds=short, attention_mask=torch.ones(short.shape[:2], dtype=torch.long, device=TEST_DEVICE),
            max_new_tokens=NEW, do_sample=False,
        )
    expected = _until_eos(out[0].tolist(), model.generation_config.eos_token_id)

    answer = engine.ask(image, QUESTION, tokens=k, max_new_tokens=NEW)
    assert answer.kept_indices == [kept]
    assert answer.output_ids == expected
    assert answer.prompt_pruned == short.shape[1] == answer.prompt_unpruned - (64 - k)


def test_language_model_sees_exactly_k_image_tokens(engine):
    seen = []
    lm = engine.adapter.model.model.language_model

    def record(module, args, kwargs):
        seen.append(kwargs["inputs_embeds"].shape[1])

    handle = lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        full = engine.ask(noise_image(4), QUESTION, method="full", max_new_tokens=2)
        seen_full = seen[0]
        seen.clear()
        pruned = engine.ask(noise_image(4), QUESTION, tokens=5, max_new_tokens=2)
    finally:
        handle.remove()
    assert seen_full == full.prompt_unpruned
    assert seen[0] == pruned.prompt_pruned == seen_full - 64 + 5  # prefill reads k image tokens
    assert seen[1:] == [1]  # then one token per decode step
    assert pruned.vision_kept == 5 and len(pruned.kept_indices[0]) == 5


def test_batch_equals_one_by_one(engine):
    images = [noise_image(10, (160, 120)), noise_image(11, (90, 200)), noise_image(12, (300, 300))]
    questions = ["What is on the table?", "Is there a red circle?", "Describe the photo in detail."]
    batch = engine.run(images, questions, tokens=6, max_new_tokens=NEW)
    for image, question, got in zip(images, questions, batch):
        alone = engine.ask(image, question, tokens=6, max_new_tokens=NEW)
        assert got.kept_indices == alone.kept_indices
        assert got.output_ids == alone.output_ids
        assert got.prompt_pruned == alone.prompt_pruned
    assert len({b.prompt_unpruned for b in batch}) > 1  # the rows really were padded

    mixed = engine.run(images, questions, tokens=[3, 64, 10], max_new_tokens=NEW)
    for image, question, k, got in zip(images, questions, [3, 64, 10], mixed):
        alone = engine.ask(image, question, tokens=k, max_new_tokens=NEW)
        assert got.vision_kept == min(k, 64) and got.kept_indices == alone.kept_indices
        assert got.output_ids == alone.output_ids


def test_timings_cover_every_stage(engine, monkeypatch):
    """Each stage's time holds the clocked calls made inside it, and no stage is counted twice."""
    clocks = StageClocks(monkeypatch, engine)
    start = time.perf_counter()
    answer = engine.ask(noise_image(105), QUESTION, tokens=8, max_new_tokens=4, ignore_eos=True)
    wall = (time.perf_counter() - start) * 1e3
    t, calls = answer.timings_ms, clocks.calls
    assert set(t) == {"preprocess", "vision", "select", "prefill", "decode", "total"}
    assert [len(calls[name]) for name in ("preprocess", "encode", "select", "forward")] == [1, 1, 1, 4]
    assert t["preprocess"] >= calls["preprocess"][0] - ROUNDING_MS
    assert t["vision"] >= calls["encode"][0] - ROUNDING_MS
    assert t["select"] >= calls["select"][0] - ROUNDING_MS
    assert t["prefill"] >= calls["forward"][0] - ROUNDING_MS
    assert t["decode"] >= sum(calls["forward"][1:]) - ROUNDING_MS
    parts = sum(v for key, v in t.items() if key != "total")
    assert parts == pytest.approx(t["total"], abs=0.01)
    assert t["total"] <= wall  # the stages do not overlap


@pytest.fixture(scope="module")
def padded_engine(tmp_path_factory):
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_llava

    path = build_tiny_llava(tmp_path_factory.mktemp("padded") / "llava-pad", seed=1, pad_to_square=True)
    return Engine(str(path), device=TEST_DEVICE, dtype="float32")


def test_pad_to_square_padding_patches_are_never_kept(padded_engine):
    adapter = padded_engine.adapter
    wide = noise_image(6, (224, 56))  # a 4:1 strip: most of the padded square is background
    prepared = adapter.preprocess([wide], [QUESTION])
    allowed = adapter.encode(prepared).allowed[0]
    assert 0 < int(allowed.sum()) < 64
    # independent check on the pixels: every disallowed patch is pure, uniform background
    pixels = prepared.inputs["pixel_values"][0]
    patches = pixels.unfold(1, 14, 14).unfold(2, 14, 14).permute(1, 2, 0, 3, 4).reshape(64, 3, -1)
    spread = patches.amax(-1) - patches.amin(-1)
    assert float(spread[~allowed].max()) < 1e-5
    assert float(spread[allowed].min()) > 0.1  # allowed patches hold real image content

    k = 6
    answer = padded_engine.ask(wide, QUESTION, tokens=k, max_new_tokens=2)
    assert len(answer.kept_indices[0]) == k and all(bool(allowed[i]) for i in answer.kept_indices[0])
    many = padded_engine.ask(wide, QUESTION, tokens=int(allowed.sum()) + 3, max_new_tokens=2)
    assert many.kept_indices[0] == allowed.nonzero().flatten().tolist()


def test_checkpoint_without_chat_template_uses_llava_conversation_format(tmp_path):
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_llava

    path = build_tiny_llava(tmp_path / "no-template", chat_template=False)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    assert engine.adapter.prompt("Is it red?") == "USER: <image>\nIs it red? ASSISTANT:"
    answer = engine.ask(noise_image(7), "Is it red?", tokens=4, max_new_tokens=2)
    assert answer.vision_kept == 4


@pytest.mark.parametrize(
    "layout", [{}, {"select_strategy": "full"}, {"feature_layer": [-3, -2]}, {"feature_layer": -1}]
)
def test_feature_layouts_u_is_the_projector_input(tmp_path, layout):
    """Whatever layer(s) and CLS handling the config names, U is exactly what the projector consumes."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_llava

    path = build_tiny_llava(tmp_path / "layout", seed=2, **layout)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    adapter = engine.adapter
    seen = []
    hook = adapter.model.model.multi_modal_projector.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            tokens = adapter.encode(adapter.preprocess([noise_image(8)], [QUESTION]))
    finally:
        hook.remove()
    torch.testing.assert_close(tokens.features, seen[0], rtol=0, atol=0)
    n = 65 if layout.get("select_strategy") == "full" else 64
    assert tokens.vision.shape[1] == n

    model = LlavaForConditionalGeneration.from_pretrained(path).eval().to(TEST_DEVICE)
    inputs = _processor_inputs(AutoProcessor.from_pretrained(path), noise_image(8), QUESTION)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    expected = _until_eos(out[0, inputs["input_ids"].shape[1] :].tolist(), model.generation_config.eos_token_id)
    assert engine.ask(noise_image(8), QUESTION, tokens=n, max_new_tokens=NEW).output_ids == expected
    assert engine.ask(noise_image(8), QUESTION, tokens=7, max_new_tokens=NEW).vision_kept == 7


def test_random_draws_follow_the_image_not_the_batch(engine):
    def kept(images):
        answers = engine.run(images, ["What is here?"] * len(images), method="random", tokens=8, max_new_tokens=1)
        return [a.kept_indices[0] for a in answers]

    a, b, a_again = noise_image(11), noise_image(12), noise_image(11)
    alone, pair, swapped = kept([a]), kept([a, b]), kept([b, a_again])
    assert pair[0] == alone[0] == swapped[1] and pair[1] == swapped[0]  # the same pixels, the same tokens
    assert pair[0] != pair[1]  # another image, another draw

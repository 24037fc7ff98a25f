"""LLaVA-NeXT on a tiny random checkpoint, against plain transformers and a hand-built reference."""

import json

import pytest
import torch
from transformers import AutoProcessor, LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.models.views import split_evenly

from . import reference
from .checks import assert_batch_equals_one_by_one
from .conftest import noise_image
from .device import TEST_DEVICE, to_device

QUESTION = "What colour is the cat on the sofa?"
WORDS = ["colour", "cat", "on", "sofa"]
NEW = 8
SIDE = 4  # tokens per side of one view: image_size 56 / patch 14
SIZES = [(160, 120), (90, 200), (56, 56)]  # 2x2 crops, 2x1 crops, 1x2 crops


@pytest.fixture(scope="module")
def next_path(tmp_path_factory):
    from mmtok_cli.tiny import build_tiny_llava_next

    return build_tiny_llava_next(tmp_path_factory.mktemp("next") / "tiny-llava-next", seed=4)


@pytest.fixture(scope="module")
def next_engine(next_path):
    from mmtok_cli.engine import Engine

    return Engine(str(next_path), device=TEST_DEVICE, dtype="float32")


@pytest.fixture(scope="module")
def plain(next_path):
    model = LlavaNextForConditionalGeneration.from_pretrained(next_path).eval().to(TEST_DEVICE)
    return model, AutoProcessor.from_pretrained(next_path)


def _inputs(processor, images, questions):
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    processor.tokenizer.padding_side = "left"
    return to_device(processor(images=images, text=prompts, padding=True, return_tensors="pt"))


def _until_eos(ids, eos):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_split_evenly():
    assert split_evenly(160, [576] * 5) == [32] * 5  # the paper's 32 x 5
    assert split_evenly(7, [16, 12, 12, 12, 12]) == [2, 2, 1, 1, 1]
    assert split_evenly(20, [16, 2, 2]) == [16, 2, 2]  # small views give their share to the others
    assert split_evenly(12, [16, 2, 2]) == [8, 2, 2]
    assert split_evenly(100, [3, 4]) == [3, 4]


@pytest.mark.parametrize("method,k", [("full", 1), ("mmtok", 10_000)])
def test_unpruned_batch_equals_plain_generate(next_engine, plain, method, k):
    model, processor = plain
    images = [noise_image(20 + i, size) for i, size in enumerate(SIZES)]
    questions = [QUESTION, "Is there a red circle?", "Describe the photo in detail."]
    inputs = _inputs(processor, images, questions)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    width, eos = inputs["input_ids"].shape[1], model.generation_config.eos_token_id
    answers = next_engine.run(images, questions, method=method, tokens=k, max_new_tokens=NEW)
    for row, answer in enumerate(answers):
        assert answer.output_ids == _until_eos(out[row, width:].tolist(), eos)
        assert answer.vision_kept == answer.vision_total
        assert answer.prompt_pruned == answer.prompt_unpruned == int(inputs["attention_mask"][row].sum())


def _views_by_hand(model, inputs, image_size, select=lambda hidden: hidden[-2][:, 1:], resample=None):
    """Per image token: V, U and the view it comes from, in the model's packed order without row newlines.

    The packing is written out here: base view first, then the crops stitched into one grid, the
    rows/columns that only hold the processor's padding cut off (symmetrically), then row-major.
    `select`: U from the vision tower's hidden states (here: penultimate layer, CLS dropped); `resample`: what
    the model does to the unpadded (rows, cols, c) crop grid before flattening it (LLaVA-OneVision), if anything.
    A resampled token's view is the one that gave it the largest weight.
    """
    config = model.config
    grid_h, grid_w = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, 56)
    views = 1 + grid_h * grid_w
    hidden = model.model.vision_tower(inputs["pixel_values"][0, :views], output_hidden_states=True).hidden_states
    U = select(hidden)  # (views, 16, e)
    V = model.model.multi_modal_projector(U)
    view_weight = torch.eye(views, device=V.device)[:, None].expand(views, SIDE * SIDE, views)

    def stitch(x):  # crops (grid_h*grid_w, 16, ...) -> (grid_h*4, grid_w*4, ...)
        x = x[1:].reshape(grid_h, grid_w, SIDE, SIDE, *x.shape[2:])
        return x.transpose(1, 2).reshape(grid_h * SIDE, grid_w * SIDE, *x.shape[4:])

    height, width = image_size
    rows, cols = grid_h * SIDE, grid_w * SIDE
    if width / height > cols / rows:
        pad = (rows - int(round(height * cols / width, 7))) // 2
        cut = (slice(pad, rows - pad), slice(None))
    else:
        pad = (cols - int(round(width * rows / height, 7))) // 2
        cut = (slice(None), slice(pad, cols - pad))

    def crops(x):
        grid = stitch(x)[cut]
        return grid if resample is None else resample(grid)

    packed = {}
    for name, x in (("V", V), ("U", U), ("view", view_weight)):
        grid = crops(x)
        packed[name] = torch.cat([x[0], grid.reshape(-1, *grid.shape[2:])])
    packed["view"] = packed["view"].argmax(-1)
    # with newlines, as the model feeds it unpruned: each grid row followed by the learned newline
    grid = crops(V)
    newline = model.model.image_newline.expand(grid.shape[0], 1, -1)
    packed["with_newlines"] = torch.cat([V[0], torch.cat([grid, newline], 1).reshape(-1, V.shape[-1])])
    return packed


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k,mode", [(7, "total"), (13, "total"), (7, "global"), (3, "per-view")])
def test_pruned_run_equals_hand_built_reference(next_engine, plain, size, k, mode):
    model, processor = plain
    image = noise_image(3, size)
    inputs = _inputs(processor, [image], [QUESTION])
    check_pruned_against_reference(next_engine, model, processor.tokenizer, inputs, image, k, mode)


def check_pruned_against_reference(engine, model, tokenizer, inputs, image, k, mode, **by_hand):
    """`engine.ask` on one image at budget k under view budget `mode` equals greedy MMTok on the hand-packed V, U
    (per view for "total" and "per-view") fed to plain `generate` through `inputs_embeds`; `by_hand` goes to
    `_views_by_hand`."""
    size = tuple(inputs["image_sizes"][0].tolist())
    with torch.no_grad():
        hand = _views_by_hand(model, inputs, size, **by_hand)
        got = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output[0]
        torch.testing.assert_close(hand["with_newlines"], got)  # the hand-written layout is the model's
        embed = model.get_input_embeddings()
        word_ids = tokenizer(WORDS, is_split_into_words=True, add_special_tokens=False)["input_ids"]
        T = embed(torch.tensor(word_ids, device=TEST_DEVICE))
        V, U, view = hand["V"], hand["U"], hand["view"]
        if mode == "global":
            kept = reference.mmtok_indices(V, U, T, k)
        else:
            members = [(view == v).nonzero().flatten() for v in range(int(view.max()) + 1)]
            n_views = len(members)
            shares = [k // n_views + (i < k % n_views) for i in range(n_views)]
            if mode == "per-view":  # k for every view (the MMTok and DivPrune authors' LLaVA-NeXT code)
                shares = [k] * n_views
            assert all(len(m) >= s for m, s in zip(members, shares))  # every view can take its share
            kept = sorted(int(m[j]) for m, s in zip(members, shares) for j in reference.mmtok_indices(V[m], U[m], T, s))
        ids = inputs["input_ids"][0]
        run = (ids == model.config.image_token_id).nonzero().flatten()
        row = embed(ids)
        short = torch.cat([row[: run[0]], V[kept], row[run[-1] + 1 :]])[None]
        mask = torch.ones(short.shape[:2], dtype=torch.long, device=TEST_DEVICE)
        out = model.generate(inputs_embeds=short, attention_mask=mask,
                             max_new_tokens=NEW, do_sample=False)
    expected = _until_eos(out[0].tolist(), model.generation_config.eos_token_id)

    answer = engine.ask(image, QUESTION, tokens=k, max_new_tokens=NEW, budget=mode)
    assert answer.conventions["budget"] == mode
    assert answer.vision_kept == len(kept)  # per-view: k for each view, so more than k in all
    assert answer.vision_total == len(V)
    assert answer.kept_indices == [kept]
    if mode != "global":  # every view keeps its share
        per_view = torch.bincount(view[kept], minlength=int(view.max()) + 1).tolist()
        assert per_view == shares
    assert answer.output_ids == expected
    assert answer.prompt_pruned == short.shape[1] == answer.prompt_unpruned - len(run) + len(kept)


def test_pick_order_interleaves_the_views_by_rank(next_engine, plain):
    """Even split: every view's first pick (base view first), then every view's second pick, ...; each view's
    picks in its own greedy order. Global: the one greedy order. Keeping everything: index order."""
    model, processor = plain
    image = noise_image(3, SIZES[0])
    inputs = _inputs(processor, [image], [QUESTION])
    with torch.no_grad():
        hand = _views_by_hand(model, inputs, (SIZES[0][1], SIZES[0][0]))
        T = model.get_input_embeddings()(torch.tensor(processor.tokenizer(
            WORDS, is_split_into_words=True, add_special_tokens=False)["input_ids"], device=TEST_DEVICE))
    V, U, view = hand["V"], hand["U"], hand["view"]
    members = [(view == v).nonzero().flatten() for v in range(int(view.max()) + 1)]
    k = 13
    shares = split_evenly(k, [len(m) for m in members])
    per_view = [[int(m[j]) for j in reference.greedy(reference.coverage(V[m], U[m], T), s)[0]]
                for m, s in zip(members, shares)]
    expected = [picks[rank] for rank in range(max(shares)) for picks in per_view if rank < len(picks)]
    answer = next_engine.ask(image, QUESTION, tokens=k, max_new_tokens=1)
    assert answer.kept_order == [expected] and sorted(expected) == answer.kept_indices[0]
    assert expected != sorted(expected)
    whole = next_engine.ask(image, QUESTION, tokens=k, max_new_tokens=1, budget="global")
    assert whole.kept_order == [reference.greedy(reference.coverage(V, U, T), k)[0]]
    everything = next_engine.ask(image, QUESTION, tokens=10_000, max_new_tokens=1)
    assert everything.kept_order == everything.kept_indices == [list(range(len(V)))]
    mixed = next_engine.run([image, noise_image(5, SIZES[1])], [QUESTION, "Is it red?"], tokens=[k, 4],
                            max_new_tokens=1)
    assert mixed[0].kept_order == [expected]
    assert sorted(mixed[1].kept_order[0]) == mixed[1].kept_indices[0] and len(mixed[1].kept_order[0]) == 4


def test_language_model_sees_exactly_k_image_tokens_and_no_newlines(next_engine, plain):
    model, processor = plain
    lm = next_engine.adapter.model.model.language_model
    seen = []
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    images = [noise_image(4, SIZES[0]), noise_image(5, SIZES[2])]
    try:
        answers = next_engine.run(images, ["Is it red?", QUESTION], tokens=[10, 6], max_new_tokens=2)
    finally:
        handle.remove()
    assert [a.vision_kept for a in answers] == [10, 6]
    prefill = seen[0]
    assert prefill.shape[1] == max(a.prompt_pruned for a in answers)
    newline = next_engine.adapter.model.model.image_newline
    assert not (prefill == newline).all(-1).any()  # no row-newline embedding reached the LM
    inputs = _inputs(processor, images, ["Is it red?", QUESTION])
    n_placeholders = (inputs["input_ids"] == model.config.image_token_id).sum(1)
    for answer, placeholders in zip(answers, n_placeholders.tolist()):
        assert answer.prompt_unpruned - answer.prompt_pruned == placeholders - answer.vision_kept


def test_batch_of_mixed_sizes_equals_one_by_one(next_engine):
    assert_batch_equals_one_by_one(next_engine, ([6, 6, 6], [3, 10_000, 11]), sizes=SIZES)


def test_ask_end_to_end(next_path, image_file):
    result = CliRunner().invoke(app, ["ask", str(image_file), QUESTION, "--model", str(next_path), "--tokens", "5",
                                      "--json", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["family"] == "llava-next"
    assert record["vision_tokens"]["kept"] == 5 and len(record["kept_indices"][0]) == 5

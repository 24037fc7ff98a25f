"""visionzip on tiny LLaVA / LLaVA-NeXT checkpoints, against a transcription of the VisionZip authors' code
(dvlab-research/VisionZip at 3151f6d, visionzip/clip_encoder.py and utils.py) fed with attention computed by
hand from the vision layer's own weights."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmtok_cli.baselines import visionzip_split
from mmtok_cli.errors import MmtokError

from .conftest import noise_image
from .device import TEST_DEVICE, to_device

QUESTION = "What colour is the cat on the sofa?"
NEW = 8


@pytest.fixture(scope="module")
def plain(tiny_llava):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava, attn_implementation="eager")
    model = model.eval().to(TEST_DEVICE)
    return model, AutoProcessor.from_pretrained(tiny_llava)


def _inputs(processor, image, question):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return to_device(processor(images=[image], text=[prompt], return_tensors="pt"))


def _until_eos(ids, eos):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _cls_attention_by_hand(layer, x_in):
    """The layer's softmax attention (1, heads, N+1, N+1) and keys averaged over heads (VisionZip's metric),
    from its LayerNorm and projection weights."""
    attn = layer.self_attn
    x = F.layer_norm(x_in, x_in.shape[-1:], layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
    heads, dh = attn.num_heads, attn.head_dim
    q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(1, -1, heads, dh).transpose(1, 2)
    k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(1, -1, heads, dh).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)
    return weights, k.mean(1)


def _authors_visionzip(hidden, attn_weights, metric, dominant, contextual):
    """VisionZip's CLIPVisionTower_VisionZip.forward for one image, written out: (kept patch indices, the
    hidden rows it feeds to the projector, in order)."""
    n1, e, dev = hidden.shape[1], hidden.shape[2], hidden.device
    cls_attention_sum = attn_weights[:, :, 0, 1:].sum(dim=1)
    topk_indices = cls_attention_sum.topk(dominant - 1, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros(1, 1, dtype=topk_indices.dtype, device=dev), topk_indices], dim=1)
    mask = torch.ones(1, n1, dtype=torch.bool, device=dev).scatter_(1, all_indices, False)
    dominant_tokens = hidden.masked_select(~mask.unsqueeze(-1)).view(1, dominant, e)
    metric_filtered = metric[mask].view(1, n1 - dominant, metric.shape[2])
    hidden_filtered = hidden.masked_select(mask.unsqueeze(-1)).view(1, n1 - dominant, e)
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, metric_normalized.shape[1] // contextual)
    target_indices = torch.arange(0, metric_normalized.shape[1], step, device=dev)[:contextual]
    target_tokens = metric_normalized[:, target_indices, :]
    others = ~torch.isin(torch.arange(metric_normalized.shape[1], device=dev), target_indices)
    similarity = torch.bmm(metric_normalized[:, others, :], target_tokens.transpose(1, 2))
    assign = torch.zeros(1, int(others.sum()), contextual, device=dev)
    assign = assign.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated = torch.bmm(assign.transpose(1, 2), hidden_filtered[:, others, :]) / counts
    contextual_tokens = hidden_filtered[:, target_indices, :] + aggregated
    filtered_positions = mask[0].nonzero().flatten()
    kept = sorted((topk_indices[0] - 1).tolist() + (filtered_positions[target_indices] - 1).tolist())
    return kept, torch.cat([dominant_tokens, contextual_tokens], dim=1)[0]


@pytest.mark.parametrize("k", [4, 12, 40])
def test_visionzip_equals_the_authors_code_on_hand_computed_attention(engine, plain, k):
    model, processor = plain
    image = noise_image(3)
    inputs = _inputs(processor, image, QUESTION)
    with torch.no_grad():
        tower = model.model.vision_tower
        out = tower(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
        layer = tower.encoder.layers[-2]  # the layer whose output the model reads (vision_feature_layer -2)
        weights, metric = _cls_attention_by_hand(layer, out.hidden_states[-3])
        torch.testing.assert_close(weights, out.attentions[-2])  # the same as the model's own (eager) attention
        dominant, contextual = visionzip_split(k)
        kept, rows = _authors_visionzip(out.hidden_states[-2], weights, metric, dominant, contextual)
        fed = model.model.multi_modal_projector(rows)
        embed = model.get_input_embeddings()
        ids = inputs["input_ids"][0]
        run = (ids == model.config.image_token_id).nonzero().flatten()
        row = embed(ids)
        short = torch.cat([row[: run[0]], fed, row[run[-1] + 1 :]])[None]
        mask = torch.ones(short.shape[:2], dtype=torch.long, device=TEST_DEVICE)
        generated = model.generate(inputs_embeds=short, attention_mask=mask,
                                   max_new_tokens=NEW, do_sample=False)
    expected = _until_eos(generated[0].tolist(), model.generation_config.eos_token_id)

    answer = engine.ask(image, QUESTION, method="visionzip", tokens=k, max_new_tokens=NEW)
    assert answer.kept_indices == [kept]  # dominant tokens and contextual targets
    assert answer.vision_kept == k == len(fed)  # the language model receives exactly k tokens, the CLS among them
    assert answer.prompt_pruned == short.shape[1] == answer.prompt_unpruned - 64 + k
    assert answer.output_ids == expected


def test_language_model_receives_exactly_k_rows(engine):
    seen = []
    lm = engine.adapter.model.model.language_model
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        full = engine.ask(noise_image(4), QUESTION, method="full", max_new_tokens=1)
        zipped = engine.ask(noise_image(4), QUESTION, method="visionzip", tokens=9, max_new_tokens=1)
    finally:
        handle.remove()
    assert seen == [full.prompt_unpruned, full.prompt_unpruned - 64 + 9]
    assert zipped.vision_kept == 9


def test_k_at_least_n_is_the_unpruned_model(engine):
    image = noise_image(5)
    full = engine.ask(image, QUESTION, method="full", max_new_tokens=NEW)
    everything = engine.ask(image, QUESTION, method="visionzip", tokens=64, max_new_tokens=NEW)
    assert everything.output_ids == full.output_ids
    assert everything.kept_indices == [list(range(64))] and everything.vision_kept == 64
    assert everything.prompt_pruned == full.prompt_unpruned


def test_a_batch_equals_one_at_a_time(engine):
    images = [noise_image(10 + i, size) for i, size in enumerate([(160, 120), (90, 200), (300, 300)])]
    questions = ["What is on the table?", "Is there a red circle?", "Describe the photo in detail."]
    budgets = [9, 3, 64]
    batch = engine.run(images, questions, method="visionzip", tokens=budgets, max_new_tokens=NEW)
    for image, question, k, got in zip(images, questions, budgets, batch):
        alone = engine.ask(image, question, method="visionzip", tokens=k, max_new_tokens=NEW)
        assert got.kept_indices == alone.kept_indices and got.vision_kept == alone.vision_kept == k
        assert got.output_ids == alone.output_ids
        assert got.prompt_pruned == alone.prompt_pruned


def test_split_of_the_budget_is_the_authors():
    assert visionzip_split(64) == (54, 10) and visionzip_split(128) == (108, 20) and visionzip_split(192) == (162, 30)
    assert visionzip_split(4) == (3, 1) and visionzip_split(1) == (1, 0)


@pytest.fixture(scope="module")
def next_engine(tmp_path_factory):
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_llava_next

    path = build_tiny_llava_next(tmp_path_factory.mktemp("next") / "tiny-llava-next", seed=4)
    return Engine(str(path), device=TEST_DEVICE, dtype="float32")


def test_llava_next_zips_every_view(next_engine):
    images = [noise_image(20, (160, 120)), noise_image(21, (90, 200))]
    questions = [QUESTION, "Is there a red circle?"]
    ids = next_engine.prepare(images, questions).inputs["input_ids"]
    placeholders = (ids == next_engine.adapter.image_token_id).sum(1).tolist()  # packed tokens, newlines included
    batch = next_engine.run(images, questions, method="visionzip", tokens=[10, 6], max_new_tokens=NEW)
    for image, question, k, got, packed in zip(images, questions, [10, 6], batch, placeholders):
        alone = next_engine.ask(image, question, method="visionzip", tokens=k, max_new_tokens=NEW)
        assert got.vision_kept == alone.vision_kept == k  # split over the views, the CLS of each among them
        assert got.kept_indices == alone.kept_indices and got.output_ids == alone.output_ids
        assert got.prompt_pruned == got.prompt_unpruned - packed + k  # the newlines go, exactly k image tokens remain
    views = 1 + 4  # the first image: base view + 2 x 2 crops, 16 tokens each
    per_view = next_engine.ask(images[0], QUESTION, method="visionzip", tokens=3, budget="per-view", max_new_tokens=1)
    assert per_view.vision_kept == 3 * views and per_view.conventions["budget"] == "per-view"
    with pytest.raises(MmtokError, match="within each view"):
        next_engine.ask(images[0], QUESTION, method="visionzip", tokens=3, budget="global", max_new_tokens=1)


def test_families_without_a_cls_token_are_refused_in_one_line():
    from mmtok_cli.models.qwen_vl import QwenVLAdapter

    adapter = QwenVLAdapter.__new__(QwenVLAdapter)  # the refusal needs no model
    with pytest.raises(MmtokError, match="works on llava, llava-next, not qwen2.5-vl") as err:
        adapter.visionzip_inputs(None, None)
    assert "\n" not in str(err.value)

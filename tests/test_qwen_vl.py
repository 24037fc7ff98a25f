"""Qwen2.5-VL and Qwen3-VL on tiny random checkpoints, against plain transformers and hand-built references.

The references here do not use mmtok code: inputs are built from the image processor and tokenizer
directly, M-RoPE positions are written out from Qwen's rule, and decoding is a hand-written greedy
loop over the language model.
"""

import inspect
import json

import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import is_torchvision_available
from typer.testing import CliRunner

from mmtok_cli.cli import app

from . import reference
from .checks import assert_batch_equals_one_by_one
from .conftest import noise_image
from .device import TEST_DEVICE, to_device

QUESTION = "What colour is the cat on the sofa?"
WORDS = ["colour", "cat", "on", "sofa"]  # the question's content words
NEW = 8
SIZES = [(160, 120), (90, 200), (300, 300)]  # different aspect ratios: different n per image


@pytest.fixture(scope="module", params=["2.5", "3"])
def qwen(request, tmp_path_factory):
    """(version, checkpoint folder, mmtok engine, the model loaded straight through transformers)."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_qwen_vl

    version = request.param
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen") / f"tiny-qwen{version}", version=version, seed=3)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    model = engine.adapter.model_class().from_pretrained(path).eval().to(TEST_DEVICE)
    return version, path, engine, model


def _plain_inputs(path, images, questions):
    """Processor inputs built by hand from the image processor and tokenizer (left-padded batch)."""
    ip, tok = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pixels = ip(images=images, return_tensors="pt")
    rows = []
    for grid, question in zip(pixels["image_grid_thw"], questions):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        n = int(grid.prod()) // 4  # one LLM token per 2x2 merged patches
        rows.append(tok(prompt.replace("<|image_pad|>", "<|image_pad|>" * n))["input_ids"])
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    return {**pixels, "input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == image_id).int()}, tok


def _new_tokens(out, width, eos):
    ids = out[width:].tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_processor_is_assembled_when_the_full_one_cannot_load(qwen):
    """No torchvision: transformers cannot build the Qwen-VL processor; mmtok assembles an image-only one
    whose outputs equal the hand-built inputs."""
    _, path, engine, _ = qwen
    processor = engine.adapter.processor
    if not is_torchvision_available():
        from transformers import AutoProcessor

        with pytest.raises(ImportError, match="[Tt]orchvision"):
            AutoProcessor.from_pretrained(path)
        assert type(processor).__name__.endswith("ImageOnly")
    images = [noise_image(1, size) for size in SIZES[:2]]
    got = engine.adapter.preprocess(images, [QUESTION, "Is it red?"]).inputs
    want, _ = _plain_inputs(path, images, [QUESTION, "Is it red?"])
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(got[key].cpu().to(want[key].dtype), want[key]), key


def test_videos_without_torchvision_get_a_clear_error(qwen):
    from mmtok_cli.errors import MmtokError

    processor = qwen[2].adapter.processor
    if not type(processor).__name__.endswith("ImageOnly"):
        pytest.skip("the full processor loaded (torchvision is installed)")
    with pytest.raises(MmtokError, match="torchvision"):
        processor(text=["<|video_pad|>"], videos=[[noise_image(1)] * 2])


@pytest.mark.parametrize("method,k", [("full", 0), ("mmtok", 10_000)])
def test_unpruned_batch_equals_plain_generate(qwen, method, k):
    _, path, engine, model = qwen
    images = [noise_image(20 + i, size) for i, size in enumerate(SIZES)]
    questions = [QUESTION, "Is there a red circle?", "Describe the photo in detail."]
    inputs, tok = _plain_inputs(path, images, questions)
    with torch.no_grad():
        out = model.generate(**to_device(inputs), max_new_tokens=NEW, do_sample=False)
    width = inputs["input_ids"].shape[1]
    answers = engine.run(images, questions, method=method, tokens=max(k, 1), max_new_tokens=NEW)
    totals = [a.vision_total for a in answers]
    assert len(set(totals)) == 3  # dynamic resolution: each image its own n
    for row, answer in enumerate(answers):
        assert answer.output_ids == _new_tokens(out[row], width, tok.eos_token_id)
        assert answer.vision_kept == answer.vision_total == int(inputs["image_grid_thw"][row].prod()) // 4
        assert answer.prompt_pruned == answer.prompt_unpruned == int(inputs["attention_mask"][row].sum())


def _rope_positions(ids, image_id, grid):
    """Qwen's M-RoPE rule for one unpadded row: text advances all three axes by one; an image of
    h x w merged tokens at offset s puts token (r, c) at (s, s + r, s + c); text resumes at s + max(h, w)."""
    h, w = int(grid[1]) // 2, int(grid[2]) // 2
    positions, cur, i = [], 0, 0
    while i < len(ids):
        if ids[i] == image_id:
            positions += [(cur, cur + r, cur + c) for r in range(h) for c in range(w)]
            i, cur = i + h * w, cur + max(h, w)
        else:
            positions.append((cur, cur, cur))
            i, cur = i + 1, cur + 1
    return torch.tensor(positions).T


def _greedy(model, embeds, positions, steps, eos, deepstack=None, visual=None):
    """Greedy decoding straight on the language model: prefill, then one token at a time; each new
    token sits one past the largest position so far, on all three axes."""
    from transformers import DynamicCache

    lm, cache, out = model.model.language_model, DynamicCache(config=model.config.text_config), []
    # transformers 5.25 renamed the language model's `past_key_values` to `cache` (the old name warns until 5.40)
    kv = {"cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values": cache}
    extra = {"visual_pos_masks": visual[None], "deepstack_visual_embeds": deepstack} if deepstack else {}
    hidden = lm(inputs_embeds=embeds[None], position_ids=positions[:, None], **kv, use_cache=True,
                **extra).last_hidden_state
    nxt = positions.max() + 1
    for _ in range(steps):
        token = int(model.lm_head(hidden[0, -1]).argmax())
        out.append(token)
        if token == eos:
            break
        embeds = model.get_input_embeddings()(torch.tensor([[token]], device=embeds.device))
        hidden = lm(inputs_embeds=embeds, position_ids=nxt.view(1, 1, 1).expand(3, 1, 1), **kv,
                    use_cache=True).last_hidden_state
        nxt = nxt + 1
    return out


def _vision_by_hand(model, inputs):
    """V (merger output), U (pre-merger ViT features averaged per merged group, matched to V by
    recomputing the merger on each group) and, for Qwen3-VL, the deepstack features."""
    visual, seen = model.model.visual, []
    hook = visual.merger.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        out = visual(inputs["pixel_values"].to(model.device), grid_thw=inputs["image_grid_thw"].to(model.device))
    finally:
        hook.remove()
    V, groups = out.pooler_output, seen[0].view(-1, 4, seen[0].shape[-1])
    merged = visual.merger(seen[0])  # merger output in the ViT's internal (windowed) group order
    order = torch.cdist(V, merged).argmin(1)  # which group each V row came from
    assert torch.equal(torch.sort(order).values, torch.arange(len(V), device=V.device))
    deep = getattr(out, "deepstack_features", None)
    return V, groups.mean(1)[order], deep


@pytest.mark.parametrize("k", [1, 6, 17])
def test_pruned_run_equals_hand_built_reference(qwen, k):
    _, path, engine, model = qwen
    image = noise_image(3, (200, 140))
    inputs, tok = _plain_inputs(path, [image], [QUESTION])
    inputs = to_device(inputs)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    with torch.no_grad():
        V, U, deep = _vision_by_hand(model, inputs)
        embed = model.get_input_embeddings()
        word_ids = tok(WORDS, is_split_into_words=True, add_special_tokens=False)["input_ids"]
        kept = reference.mmtok_indices(V, U, embed(torch.tensor(word_ids, device=TEST_DEVICE)), k, tau_t=0.01)
        # the pruned prompt: text rows, plus the kept image rows, each at its unpruned position
        ids = inputs["input_ids"][0]
        positions = _rope_positions(ids.tolist(), image_id, inputs["image_grid_thw"][0]).to(TEST_DEVICE)
        is_image = ids == image_id
        rows = embed(ids)
        rows[is_image] = V
        keep = ~is_image
        keep[is_image.nonzero().flatten()[kept]] = True
        visual = is_image[keep]
        deepstack = [layer[kept] for layer in deep] if deep else None
        expected = _greedy(model, rows[keep], positions[:, keep], NEW, tok.eos_token_id, deepstack, visual)

    answer = engine.ask(image, QUESTION, tokens=k, max_new_tokens=NEW)
    assert answer.kept_indices == [kept]
    assert answer.output_ids == expected
    assert answer.prompt_pruned == int(keep.sum()) == answer.prompt_unpruned - (len(V) - k)


def test_u_is_the_merger_input_pooled_per_group(qwen):
    _, path, engine, model = qwen
    image = noise_image(4, (230, 120))
    inputs, _ = _plain_inputs(path, [image], [QUESTION])
    with torch.no_grad():
        V, U, _ = _vision_by_hand(model, inputs)
        tokens = engine.adapter.encode(engine.adapter.preprocess([image], [QUESTION]))
    torch.testing.assert_close(tokens.vision[0], V)
    torch.testing.assert_close(tokens.features[0], U)


def test_language_model_sees_exactly_k_image_tokens(qwen):
    version, _, engine, _ = qwen
    lm = engine.adapter.model.model.language_model
    calls = []

    def record(module, args, kwargs):
        visual = kwargs.get("visual_pos_masks")
        calls.append((kwargs["inputs_embeds"].shape[1], None if visual is None else visual.sum(-1).tolist(),
                      [len(d) for d in kwargs.get("deepstack_visual_embeds") or []]))

    images = [noise_image(5, SIZES[0]), noise_image(6, SIZES[1])]
    handle = lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        answers = engine.run(images, ["Is it red?", QUESTION], tokens=[5, 3], max_new_tokens=3)
    finally:
        handle.remove()
    width, visual, deep = calls[0]
    assert width == max(a.prompt_pruned for a in answers)
    assert [a.vision_kept for a in answers] == [5, 3]
    if version == "3":  # deepstack features are injected at exactly the kept image positions
        assert visual == [5, 3] and deep == [8] * len(deep) and len(deep) == 2
    assert [c[0] for c in calls[1:]] == [1] * (len(calls) - 1)  # one token per decode step


def test_batch_of_mixed_sizes_equals_one_by_one(qwen):
    assert_batch_equals_one_by_one(qwen[2], ([6, 6, 6], [2, 10_000, 9]))


def test_ask_end_to_end(qwen, image_file):
    version, path, _, _ = qwen
    result = CliRunner().invoke(app, ["ask", str(image_file), QUESTION, "--model", str(path), "--tokens", "4",
                                      "--json", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["family"] == ("qwen2.5-vl" if version == "2.5" else "qwen3-vl")
    assert record["vision_tokens"]["kept"] == 4 and len(record["kept_indices"][0]) == 4
    tokens = record["prompt_tokens"]
    assert tokens["pruned"] == tokens["unpruned"] - record["vision_tokens"]["total"] + 4


@pytest.mark.parametrize("layout", ["chat_template.json", "no template"])
def test_checkpoints_with_other_chat_template_layouts(tmp_path, layout):
    """Older Qwen-VL checkpoints ship chat_template.json; conversions may ship none (Qwen's format is used)."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_qwen_vl

    path = build_tiny_qwen_vl(tmp_path / "qwen", version="2.5", layers=1)
    template = path / "chat_template.jinja"
    if layout == "chat_template.json":
        (path / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}))
    template.unlink()
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    assert engine.adapter.prompt("Is it red?") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Is it red?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert engine.ask(noise_image(7), "Is it red?", tokens=3, max_new_tokens=2).vision_kept == 3

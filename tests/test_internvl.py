"""InternVL3 on a tiny random checkpoint, against plain transformers and a hand-built reference.

The references do not use mmtok code: the processor inputs are built from the image processor and the
tokenizer directly, U is what the model's projector receives (a hook records it), and the pruned run
is a plain `generate` on hand-assembled `inputs_embeds`.
"""

import json

import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration
from transformers.utils import is_torchvision_available
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.models.views import split_evenly

from . import reference
from .checks import QUESTIONS, assert_batch_equals_one_by_one, ray_and_local_records
from .conftest import noise_image
from .device import TEST_DEVICE, to_device

QUESTION = "What colour is the cat on the sofa?"
WORDS = ["colour", "cat", "on", "sofa"]
NEW = 8
PER_VIEW = 16  # tokens per view: (56 px / 7 px patches / 2)^2
SIZES = [(160, 120), (90, 200), (50, 50)]  # 2x2 tiles + thumbnail, 1x2 tiles + thumbnail, one tile
VIEWS = [5, 3, 1]
runner = CliRunner()


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    from mmtok_cli.tiny import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("internvl") / "tiny-internvl", seed=5)


@pytest.fixture(scope="module")
def engine(path):
    from mmtok_cli.engine import Engine

    return Engine(str(path), device=TEST_DEVICE, dtype="float32")


@pytest.fixture(scope="module")
def model(path):
    return InternVLForConditionalGeneration.from_pretrained(path).eval().to(TEST_DEVICE)


def _plain_inputs(path, images, questions):
    """What InternVLProcessor makes, written out: tiles (crop_to_patches) from the image processor, and each
    image's `<IMG_CONTEXT>` expanded to `<img>` + image_seq_length tokens per view + `</img>`; left-padded."""
    ip, tok = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    seq = json.loads((path / "processor_config.json").read_text())["image_seq_length"]
    pixels = ip(images=images, crop_to_patches=True, return_tensors="pt")
    rows = []
    for views, question in zip(pixels["num_patches"].tolist(), questions):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         chat_template=(path / "chat_template.jinja").read_text())
        block = "<img>" + "<IMG_CONTEXT>" * (seq * views) + "</img>"
        rows.append(tok(prompt.replace("<IMG_CONTEXT>", block, 1))["input_ids"])
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"pixel_values": pixels["pixel_values"], "input_ids": ids, "attention_mask": mask}, tok


def _until_eos(ids, eos):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _vision_by_hand(model, pixel_values):
    """V (projector output) and U (projector input, recorded by a hook) per token, views in order, and each
    token's view."""
    seen = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        V = model.get_image_features(pixel_values=pixel_values.to(model.device)).pooler_output
    finally:
        hook.remove()
    view = torch.arange(len(V), device=V.device)[:, None].expand(-1, V.shape[1])
    return V.flatten(0, 1), seen[0].flatten(0, 1), view.flatten()


def test_processor_is_assembled_when_the_full_one_cannot_load(engine, path):
    """No torchvision: InternVLProcessor (which has a video processor) cannot load; mmtok assembles an
    image-only one that keeps image_seq_length and the image tokens, and whose outputs equal the hand-built ones."""
    processor = engine.adapter.processor
    if not is_torchvision_available():
        assert type(processor).__name__ == "InternVLProcessorImageOnly"
    assert processor.image_seq_length == PER_VIEW
    assert (processor.image_token, processor.start_image_token, processor.end_image_token) == (
        "<IMG_CONTEXT>", "<img>", "</img>")
    images = [noise_image(1, size) for size in SIZES]
    got = engine.adapter.preprocess(images, [QUESTION, "Is it red?", "Describe it."]).inputs
    want, _ = _plain_inputs(path, images, [QUESTION, "Is it red?", "Describe it."])
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(got[key].cpu().to(want[key].dtype), want[key]), key
    assert (want["input_ids"] == engine.adapter.image_token_id).sum(1).tolist() == [PER_VIEW * v for v in VIEWS]


def test_videos_without_torchvision_get_a_clear_error(engine):
    from mmtok_cli.errors import MmtokError

    processor = engine.adapter.processor
    if not type(processor).__name__.endswith("ImageOnly"):
        pytest.skip("the full processor loaded (torchvision is installed)")
    with pytest.raises(MmtokError, match="torchvision"):
        processor(text=["<video>"], videos=[[noise_image(1)] * 2])


@pytest.mark.parametrize("method,k", [("full", 1), ("mmtok", 10_000)])
def test_unpruned_batch_equals_plain_generate(engine, model, path, method, k):
    images = [noise_image(20 + i, size) for i, size in enumerate(SIZES)]
    questions = [QUESTION, "Is there a red circle?", "Describe the photo in detail."]
    inputs, tok = _plain_inputs(path, images, questions)
    with torch.no_grad():
        out = model.generate(**to_device(inputs), max_new_tokens=NEW, do_sample=False)
    width = inputs["input_ids"].shape[1]
    answers = engine.run(images, questions, method=method, tokens=k, max_new_tokens=NEW)
    for row, answer in enumerate(answers):
        assert answer.output_ids == _until_eos(out[row, width:].tolist(), tok.eos_token_id)
        assert answer.vision_kept == answer.vision_total == PER_VIEW * VIEWS[row]
        assert answer.prompt_pruned == answer.prompt_unpruned == int(inputs["attention_mask"][row].sum())


def test_u_is_the_projector_input_and_v_its_output(engine, model, path):
    images = [noise_image(4, SIZES[0]), noise_image(5, SIZES[2])]
    inputs, _ = _plain_inputs(path, images, [QUESTION, QUESTION])
    with torch.no_grad():
        V, U, view = _vision_by_hand(model, inputs["pixel_values"])
        tokens = engine.adapter.encode(engine.adapter.preprocess(images, [QUESTION, QUESTION]))
    n = PER_VIEW * VIEWS[0]
    assert tokens.counts == [n, PER_VIEW]
    torch.testing.assert_close(tokens.vision[0], V[:n])
    torch.testing.assert_close(tokens.features[0], U[:n])
    torch.testing.assert_close(tokens.features[1, :PER_VIEW], U[n:])
    assert tokens.parts[0].tolist() == view[:n].tolist()  # tiles 0-3, then the thumbnail (4)
    assert tokens.parts[1].tolist() == [0] * PER_VIEW + [-1] * (n - PER_VIEW)


@pytest.mark.parametrize("size", SIZES[:2])
@pytest.mark.parametrize("k,mode", [(7, "total"), (13, "total"), (9, "global")])
def test_pruned_run_equals_hand_built_reference(engine, model, path, size, k, mode):
    image = noise_image(3, size)
    inputs, tok = _plain_inputs(path, [image], [QUESTION])
    inputs = to_device(inputs)
    with torch.no_grad():
        V, U, view = _vision_by_hand(model, inputs["pixel_values"])
        embed = model.get_input_embeddings()
        word_ids = tok(WORDS, is_split_into_words=True, add_special_tokens=False)["input_ids"]
        T = embed(torch.tensor(word_ids, device=TEST_DEVICE))
        if mode == "global":
            kept = reference.mmtok_indices(V, U, T, k)
        else:
            members = [(view == v).nonzero().flatten() for v in range(int(view.max()) + 1)]
            shares = [k // len(members) + (i < k % len(members)) for i in range(len(members))]  # tiles first
            kept = sorted(int(m[j]) for m, s in zip(members, shares) for j in reference.mmtok_indices(V[m], U[m], T, s))
        ids = inputs["input_ids"][0]
        run = (ids == model.config.image_token_id).nonzero().flatten()
        row = embed(ids)
        short = torch.cat([row[: run[0]], V[kept], row[run[-1] + 1 :]])[None]  # <img> and </img> stay
        out = model.generate(inputs_embeds=short,
                             attention_mask=torch.ones(short.shape[:2], dtype=torch.long, device=TEST_DEVICE),
                             max_new_tokens=NEW, do_sample=False)
    expected = _until_eos(out[0].tolist(), tok.eos_token_id)

    answer = engine.ask(image, QUESTION, tokens=k, max_new_tokens=NEW, budget=mode)
    assert answer.vision_total == len(V)
    assert answer.kept_indices == [kept]
    if mode != "global":
        assert torch.bincount(view[kept], minlength=int(view.max()) + 1).tolist() == shares
    assert answer.output_ids == expected
    assert answer.prompt_pruned == short.shape[1] == answer.prompt_unpruned - len(run) + k


def test_language_model_sees_exactly_k_image_tokens_split_over_the_views(engine, model, path):
    """The prefill's image rows are exactly k of the image's V rows per item, each view holding its even share."""
    lm = engine.adapter.model.model.language_model
    seen = []
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    images = [noise_image(4, SIZES[0]), noise_image(5, SIZES[1])]
    budgets = [12, 7]
    try:
        answers = engine.run(images, ["Is it red?", QUESTION], tokens=budgets, max_new_tokens=2)
    finally:
        handle.remove()
    prefill = seen[0]
    assert prefill.shape[1] == max(a.prompt_pruned for a in answers)
    assert [s.shape[1] for s in seen[1:]] == [1] * (len(seen) - 1)
    inputs, _ = _plain_inputs(path, images, ["Is it red?", QUESTION])
    with torch.no_grad():
        V, _, view = _vision_by_hand(model, inputs["pixel_values"])
    start = 0
    for row, (k, views) in enumerate(zip(budgets, VIEWS)):
        n = PER_VIEW * views
        mine, mine_view = V[start : start + n], view[start : start + n] - view[start]
        start += n
        match = (prefill[row][:, None, :] == mine[None]).all(-1)  # (positions, image tokens)
        positions, tokens = match.nonzero(as_tuple=True)
        assert len(positions) == k and len(set(tokens.tolist())) == k  # k image rows, k different tokens
        assert tokens.tolist() == answers[row].kept_indices[0]  # in their original order
        per_view = torch.bincount(mine_view[tokens], minlength=views).tolist()
        assert per_view == split_evenly(k, [PER_VIEW] * views)


def test_batch_of_mixed_sizes_equals_one_by_one(engine):
    assert_batch_equals_one_by_one(engine, ([6, 6, 6], [3, 10_000, 11]), sizes=SIZES)


def test_token_regions_tiles_and_thumbnail(engine):
    """A 112x56 image is exactly two 56-px tiles (1x2 grid, no resize) and a thumbnail squashed to 56x56:
    tile tokens are 14-px squares (2x2 patches of 7 px), thumbnail tokens 28x14 of the original."""
    from PIL import Image

    prepared = engine.prepare([Image.new("RGB", (112, 56))], ["q"])
    regions = engine.adapter.token_regions(prepared, 0)
    tiles = [(56 * t + 14 * c, 14 * r, 56 * t + 14 * c + 14, 14 * r + 14) for t in range(2) for r in range(4)
             for c in range(4)]
    thumbnail = [(28 * c, 14 * r, 28 * c + 28, 14 * r + 14) for r in range(4) for c in range(4)]
    assert regions.boxes == [pytest.approx(b) for b in tiles + thumbnail]
    assert regions.panel == [0] * 32 + [1] * 16 and regions.panels == ("tiles", "thumbnail")
    one = engine.adapter.token_regions(engine.prepare([Image.new("RGB", (28, 28))], ["q"]), 0)
    assert one.panels == ("image",) and one.boxes == [(7 * c, 7 * r, 7 * c + 7, 7 * r + 7) for r in range(4)
                                                      for c in range(4)]


# -- the shared machinery on this family: one light run each ----------------------------------------


def test_agent_batch_equals_one_at_a_time(engine):
    images = [noise_image(30 + i, size) for i, size in enumerate(SIZES[:2])]
    batch = engine.run(images, QUESTIONS[:2], tokens=[6, 10], max_new_tokens=3, agent=True)
    for image, question, k, got in zip(images, QUESTIONS, [6, 10], batch):
        alone = engine.ask(image, question, tokens=k, max_new_tokens=3, agent=True)
        assert (got.agent_answer, got.output_ids, got.kept_indices) == (alone.agent_answer, alone.output_ids,
                                                                        alone.kept_indices)
        assert got.vision_kept == k and got.agent_answer is not None


@pytest.mark.parametrize("method", ["random", "uniform", "divprune"])
def test_baselines_keep_k_split_over_the_views(engine, method):
    answer = engine.ask(noise_image(8, SIZES[0]), QUESTION, method=method, tokens=11, max_new_tokens=2)
    kept = answer.kept_indices[0]
    assert answer.vision_kept == len(kept) == 11 and kept == sorted(set(kept))
    per_view = torch.bincount(torch.tensor(kept) // PER_VIEW, minlength=5).tolist()
    assert per_view == split_evenly(11, [PER_VIEW] * 5)


def test_eval_runs(path, tmp_path):
    from mmtok_cli.synth import generate

    generate(tmp_path / "synth", 2, seed=0)
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(tmp_path / "synth" / "questions.jsonl"), "--model", str(path),
                                 "--device", TEST_DEVICE, "--tokens", "8", "--methods", "mmtok,random",
                                 "--max-new-tokens", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [(r["method"], r["tokens"]) for r in rows] == [("full", "full"), ("mmtok", 8), ("random", 8)]
    assert all(r["failed"] == 0 for r in rows) and rows[1]["mean_kept"] == 8


def test_batch_ray_equals_local_run(path, tmp_path):
    for i, size in enumerate(SIZES):
        noise_image(40 + i, size).save(tmp_path / f"img{i}.png")
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": i, "image": f"img{i % 3}.png", "question": "what is this ?",
                                        "tokens": [3, 10, 64][i % 3]}) + "\n" for i in range(4)))
    ray_rows, local_rows = ray_and_local_records(data, path)
    assert ray_rows == local_rows
    assert [r["vision_tokens"]["kept"] for r in local_rows] == [3, 10, 16, 3]


# -- done when: the commands on a checkpoint built without mmtok's builders ---------------------------

# The chat template transformers' InternVL converter writes into the hf checkpoints.
HF_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def independent(tmp_path_factory):
    """An InternVL checkpoint laid out as OpenGVLab/InternVL3-*-hf, built with transformers / tokenizers classes
    only: a word-level tokenizer with the template in tokenizer_config.json, the hub's preprocessor_config.json
    written out, 56-px tiles of 14-px patches (4 tokens per view, up to 6 tiles) and a Llama LLM (as InternVL3-9B)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import InternVLConfig, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("independent") / "internvl-hf"
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>", "[UNK]"]
    words = ["user", "assistant", "what", "is", "in", "this", "image", "the", "a", "red", "cat", "sofa", "colour",
             "describe", "photo", "yes", "no", "?", "."]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )
    tokenizer.chat_template = HF_TEMPLATE
    config = InternVLConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 56, "patch_size": 14, "initializer_range": 0.5},
        text_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": len(tokenizer),
                     "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "initializer_range": 0.5},
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4,
    )
    torch.manual_seed(0)
    InternVLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_to_patches": False, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "max_patches": 6, "min_patches": 1,
        "image_processor_type": "GotOcr2ImageProcessorFast", "processor_class": "InternVLProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"height": 56, "width": 56},
    }))
    (folder / "processor_config.json").write_text(json.dumps({"image_seq_length": 4,
                                                              "processor_class": "InternVLProcessor"}))
    return folder


def test_ask_batch_and_show_on_an_independently_built_checkpoint(independent, tmp_path):
    from PIL import Image

    from mmtok_cli.engine import Engine
    from mmtok_cli.io import load_image

    sizes, budgets = [(160, 120), (300, 60), (50, 50), (90, 200)], [5, 7, 100, 3]
    for i, size in enumerate(sizes):
        noise_image(50 + i, size).save(tmp_path / f"img{i}.png")
    asked = runner.invoke(app, ["ask", str(tmp_path / "img0.png"), "What is in this image?", "--model",
                                str(independent), "--tokens", "5", "--json", "--max-new-tokens", "3"])
    assert asked.exit_code == 0, asked.stderr
    record = json.loads(asked.stdout)
    assert record["family"] == "internvl" and record["vision_tokens"] == {"kept": 5, "total": 4 * 7, "cached": False}  # 3x2 tiles + 1

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": i, "image": f"img{i}.png", "question": "what colour is the cat ?",
                                        "tokens": k}) + "\n" for i, k in enumerate(budgets)))
    batch = runner.invoke(app, ["batch", str(data), "--model", str(independent), "--max-new-tokens", "4",
                                "--batch-size", "4"])
    assert batch.exit_code == 0, batch.stderr
    rows = [json.loads(line) for line in batch.stdout.splitlines()]
    engine = Engine(str(independent), device=TEST_DEVICE, dtype="float32")
    totals = set()
    for i, (row, k) in enumerate(zip(rows, budgets)):
        alone = engine.ask(load_image(str(tmp_path / f"img{i}.png")), "what colour is the cat ?", tokens=k,
                           max_new_tokens=4)
        total = row["vision_tokens"]["total"]
        totals.add(total)
        assert row["vision_tokens"]["kept"] == min(k, total) == alone.vision_kept
        assert row["answer"] == alone.answer
    assert len(totals) == 4  # each size its own number of tiles
    full = engine.ask(load_image(str(tmp_path / "img2.png")), "what colour is the cat ?", method="full",
                      max_new_tokens=4)
    assert rows[2]["answer"] == full.answer  # k >= n is the unpruned model

    out = tmp_path / "kept.png"
    shown = runner.invoke(app, ["show", str(tmp_path / "img0.png"), "what colour is the cat ?", "--model",
                                str(independent), "--tokens", "6", "--methods", "mmtok,full", "--max-new-tokens", "2",
                                "--out", str(out)])
    assert shown.exit_code == 0, shown.stderr
    with Image.open(out) as picture:
        assert picture.format == "PNG"
    regions = engine.adapter.token_regions(engine.prepare([load_image(str(tmp_path / "img0.png"))], ["q"]), 0)
    assert regions.panels == ("tiles", "thumbnail") and len(regions.boxes) == 28

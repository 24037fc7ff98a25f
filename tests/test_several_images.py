"""Several images in one question on the image families (LLaVA, LLaVA-NeXT, Gemma 3, InternVL, LLaVA-OneVision);
Qwen's are in test_video.py.

References: the family's processor run by transformers' own `apply_chat_template` on messages that carry the
images (no mmtok prompt building), then plain `model.generate` for the unpruned runs; for the pruned runs of the
families with one placeholder per vision token, a hand-written greedy loop on hand-built `inputs_embeds`: the
prompt's embeddings with each image's projected tokens in its placeholders, the dropped ones removed.
"""

import pytest
import torch

from mmtok_cli.tiny import BUILDERS

from .checks import greedy_on_embeddings
from .conftest import noise_image
from .device import TEST_DEVICE, to_device

NEW = 5
FAMILIES = ["llava", "llava-next", "gemma3", "internvl", "llava-onevision"]
ITEMS = [
    [noise_image(71, (120, 80)), noise_image(72, (80, 120))],
    [noise_image(73, (100, 100))],
    [noise_image(74, (140, 70)), noise_image(75, (90, 90)), noise_image(76, (70, 140))],
]
QUESTIONS = ["Which photo shows the newer car?", "Is there a red circle?", "What changed between the photos?"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    from mmtok_cli.engine import Engine

    path = BUILDERS[request.param](tmp_path_factory.mktemp("several") / request.param, seed=5)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32", cache_mb=0)
    model = engine.adapter.model_class().from_pretrained(path).eval().to(TEST_DEVICE)
    return request.param, engine, model


def _plain(engine, items, questions):
    """The processor's inputs for a batch, built by transformers' `apply_chat_template` from messages holding the
    images themselves (left-padded, as generation needs)."""
    processor = engine.adapter.processor
    conversations = [[{"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                                   {"type": "text", "text": q}]}]
                     for images, q in zip(items, questions)]
    processor.tokenizer.padding_side = "left"
    return processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         padding=True, return_tensors="pt")


@pytest.mark.parametrize("method,k", [("full", 1), ("mmtok", 10_000)])
def test_unpruned_several_images_equal_plain_generate(family, method, k):
    _, engine, model = family
    inputs = _plain(engine, ITEMS, QUESTIONS)
    with torch.no_grad():
        out = model.generate(**to_device(inputs), max_new_tokens=NEW, do_sample=False)
    width = inputs["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    answers = engine.run(ITEMS, QUESTIONS, method=method, tokens=k, max_new_tokens=NEW)
    for row, answer in enumerate(answers):
        ids = out[row, width:].tolist()
        ends = [i for i, t in enumerate(ids) if t in eos]
        assert answer.output_ids == (ids[: ends[0] + 1] if ends else ids)
        assert [entry["kind"] for entry in answer.vision_inputs] == ["image"] * len(ITEMS[row])
        assert answer.prompt_pruned == answer.prompt_unpruned == int(inputs["attention_mask"][row].sum())


def test_mixed_batch_equals_each_item_alone(family):
    _, engine, _ = family
    for budgets in ([6, 5, 9], [2, 10_000, 3]):
        batch = engine.run(ITEMS, QUESTIONS, tokens=budgets, max_new_tokens=NEW)
        for item, question, k, got in zip(ITEMS, QUESTIONS, budgets, batch):
            alone = engine.ask(item, question, tokens=k, max_new_tokens=NEW)
            assert got.kept_indices == alone.kept_indices and got.output_ids == alone.output_ids
            assert got.prompt_pruned == alone.prompt_pruned and got.vision_inputs == alone.vision_inputs
            assert got.vision_kept == min(k, got.vision_total)


def test_budget_total_splits_over_the_images(family):
    name, engine, _ = family
    answer = engine.ask(ITEMS[2], QUESTIONS[2], tokens=9, max_new_tokens=1)
    assert [entry["kept"] for entry in answer.vision_inputs] == [3, 3, 3]
    assert [len(idx) for idx in answer.kept_indices] == [3, 3, 3]
    assert answer.conventions.get("budget") == "total"
    if name in ("llava", "gemma3", "internvl"):  # the pruned prompt loses exactly the dropped placeholders
        assert answer.prompt_pruned == answer.prompt_unpruned - answer.vision_total + 9


@pytest.mark.parametrize("k", [4, 13])
def test_pruned_several_images_equal_generate_on_hand_built_embeddings(family, k):
    """One placeholder per vision token (LLaVA, Gemma 3, InternVL): the pruned run is `generate` on the prompt's
    embeddings with every image's tokens in its placeholders and the dropped ones taken out."""
    name, engine, model = family
    if name not in ("llava", "gemma3", "internvl"):
        pytest.skip("LLaVA-NeXT / OneVision pack row newlines between the tokens")
    answer = engine.ask(ITEMS[0], QUESTIONS[0], tokens=k, max_new_tokens=NEW)
    inputs = to_device(_plain(engine, ITEMS[:1], QUESTIONS[:1]))
    ids = inputs["input_ids"][0]
    with torch.no_grad():
        V = model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
        V = torch.cat(list(V)).reshape(-1, V[0].shape[-1])
        embeds = model.get_input_embeddings()(ids)
        placeholder = ids == model.config.image_token_id
        embeds[placeholder] = V
        sizes = [entry["total"] for entry in answer.vision_inputs]
        kept, offset = [], 0
        for idx, size in zip(answer.kept_indices, sizes):
            kept += [offset + i for i in idx]
            offset += size
        keep = ~placeholder
        keep[placeholder.nonzero().flatten()[kept]] = True
        extra = {"token_type_ids": inputs["token_type_ids"][:, keep]} if "token_type_ids" in inputs else {}
        want = greedy_on_embeddings(model, embeds[keep][None], NEW, **extra)
    assert answer.output_ids == want
    assert answer.prompt_pruned == int(keep.sum())


def test_families_without_videos_say_so(family):
    """A video for a family whose transformers class takes none: one line naming the families that do."""
    import numpy as np

    from mmtok_cli.errors import MmtokError
    from mmtok_cli.video import Video, VideoInfo

    name, engine, _ = family
    clip = Video(frames=np.zeros((2, 32, 32, 3), np.uint8), indices=[0, 1], info=VideoInfo(2, 1.0, 32, 32))
    with pytest.raises(MmtokError) as info:
        engine.ask([noise_image(1), clip], "What happens?", max_new_tokens=1)
    message = str(info.value)
    # InternVL's and LLaVA-OneVision's transformers classes take videos, which mmtok does not feed yet
    what = ("videos are not fed by mmtok yet" if name in ("internvl", "llava-onevision")
            else "checkpoints take no videos")
    assert "\n" not in message and f"{name} {what}" in message and "qwen2.5-vl" in message


# -- input lines and folders --------------------------------------------------------------------------------------


def test_lines_name_several_images_and_videos_in_key_order():
    from mmtok_cli.io import parse_line

    item = parse_line('{"video": "a.mp4", "images": ["b.jpg", "c.png"], "question": "q", "image": "d.jpg"}', 1)
    assert item.error is None and item.image is None
    assert item.visual_sources() == [("video", "a.mp4"), ("image", "b.jpg"), ("image", "c.png"), ("image", "d.jpg")]
    assert item.extra == {"video": "a.mp4", "images": ["b.jpg", "c.png"]}  # copied to the record as given
    one = parse_line('{"image": "d.jpg", "question": "q"}', 2)
    assert one.image == "d.jpg" and one.visual_sources() == [("image", "d.jpg")] and one.extra == {}
    clips = parse_line('{"videos": ["x.mp4", "y.webm"], "question": "q"}', 3)
    assert clips.visual_sources() == [("video", "x.mp4"), ("video", "y.webm")]


@pytest.mark.parametrize("line,message", [
    ('{"question": "q"}', "missing 'image'"),
    ('{"images": [], "question": "q"}', "'images' must be a non-empty list"),
    ('{"images": "a.jpg", "question": "q"}', "'images' must be a non-empty list"),
    ('{"videos": ["a.mp4", 3], "question": "q"}', "'videos' must hold paths"),
    ('{"video": "", "question": "q"}', "'video' must hold paths"),
])
def test_bad_visual_keys_are_error_records(line, message):
    from mmtok_cli.io import parse_line

    item = parse_line(line, 4)
    assert item.error is not None and message in item.error and item.error.startswith("line 4: ")


def test_a_folder_holds_video_items_too(tmp_path):
    from mmtok_cli.io import folder_items, source_fields

    for name in ("b.png", "a.mp4", "c.webm", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    items, skipped = folder_items(tmp_path, "q")
    assert [it.visual_sources() for it in items] == [[("video", "a.mp4")], [("image", "b.png")], [("video", "c.webm")]]
    assert [it.extra for it in items] == [{"video": "a.mp4"}, {}, {"video": "c.webm"}] and skipped == ["notes.txt"]
    assert source_fields([("image", "a"), ("video", "b"), ("image", "c")]) == {"images": ["a", "c"], "video": "b"}


def test_ask_takes_several_images_before_the_question(engine, tmp_path):
    """`mmtok ask A B "question"`: the same answer as the engine on both images; one image still works as ever."""
    import json

    from typer.testing import CliRunner

    from mmtok_cli.cli import app

    paths = []
    for i, image in enumerate(ITEMS[0]):
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    result = CliRunner().invoke(app, ["ask", *map(str, paths), QUESTIONS[0], "--model", engine.model_name,
                                      "--tokens", "6", "--max-new-tokens", str(NEW), "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    from mmtok_cli.io import load_image

    want = engine.ask([load_image(str(p)) for p in paths], QUESTIONS[0], tokens=6, max_new_tokens=NEW)
    assert record["images"] == list(map(str, paths)) and record["answer"] == want.answer
    assert [e["kept"] for e in record["vision_tokens"]["inputs"]] == [3, 3] and len(record["kept_indices"]) == 2
    alone = CliRunner().invoke(app, ["ask", str(paths[0]), "Is it red?", "--model", engine.model_name, "--tokens", "4",
                                     "--max-new-tokens", "2", "--json"])
    assert alone.exit_code == 0 and "inputs" not in json.loads(alone.stdout)["vision_tokens"]
    assert json.loads(alone.stdout)["image"] == str(paths[0])


def test_show_draws_several_images_side_by_side(family, tmp_path):
    """Each image's regions are the ones it has alone (families that prepare it alike in a prompt of several);
    the sheet has a column per method."""
    from mmtok_cli import show
    from mmtok_cli.errors import MmtokError

    name, engine, _ = family
    prepared = engine.prepare([ITEMS[0], ITEMS[1][0]], QUESTIONS[:2])
    if name == "llava-onevision":  # its images of a prompt of several get no crops: not the regions they have alone
        with pytest.raises(MmtokError, match="cannot draw the inputs' tokens"):
            show.show(engine, ITEMS[0], QUESTIONS[0], ["mmtok"], tokens=6, max_new_tokens=1)
        return
    regions = engine.adapter.input_regions(prepared, 0)
    for image, got in zip(ITEMS[0], regions):
        alone = engine.adapter.token_regions(engine.prepare([image], ["q"]), 0)
        assert got.boxes == alone.boxes and got.panel == alone.panel
    assert engine.adapter.input_regions(prepared, 1)[0].boxes == \
        engine.adapter.token_regions(engine.prepare([ITEMS[1][0]], ["q"]), 0).boxes
    sheet, results = show.show(engine, ITEMS[0], QUESTIONS[0], ["mmtok", "full"], tokens=6, max_new_tokens=1)
    assert [m for m, _ in results] == ["mmtok", "full"] and sheet.width > 2 * show.INPUT_SIDE

"""Videos and several images in one question, on tiny Qwen2.5-VL, Qwen3-VL and Qwen3.5 checkpoints.

References that do not use mmtok code: processor inputs built by hand from the checkpoint's image processor, video
processor and tokenizer (placeholders and Qwen3-VL's per-grid timestamps written out by hand); M-RoPE positions
written out from Qwen's rule (a video's temporal axis from its real timing on Qwen2.5-VL); a hand-written greedy
loop over the language model on hand-built `inputs_embeds` with the unpruned sequence's positions sliced to the kept
tokens; plain `model.generate` for the unpruned runs. The video processors need torchvision, the decoder PyAV:
without them this module skips.
"""

import importlib.util
import re

import numpy as np
import pytest
import torch

from mmtok_cli.errors import MmtokError
from mmtok_cli.video import FrameSampling, decode

from . import reference
from .conftest import noise_image
from .device import TEST_DEVICE, to_device
from .test_decode import write_video
from .test_qwen_vl import _greedy, _new_tokens, _vision_by_hand

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("av") is None,
    reason="videos need the `video` extra: torchvision (transformers' video processors) and PyAV (decoding)",
)

QUESTION = "What colour is the cat on the sofa?"
WORDS = ["colour", "cat", "on", "sofa"]
NEW = 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module", params=["2.5", "3", "3.5"])
def qwen(request, tmp_path_factory):
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_qwen_vl

    version = request.param
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen") / f"tiny-qwen{version}", version=version, seed=3)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32", cache_mb=0)
    model = engine.adapter.model_class().from_pretrained(path).eval().to(TEST_DEVICE)
    return version, path, engine, model


# -- hand-built references ----------------------------------------------------------------------------------------


def _timestamps(indices, fps, merge=2):
    """Qwen3-VL's timestamp of each temporal grid: the mean time of its frames (the last frame repeated to fill)."""
    indices = list(indices) + [indices[-1]] * (-len(indices) % merge)
    times = [i / fps for i in indices]
    return [(times[i] + times[i + merge - 1]) / 2 for i in range(0, len(times), merge)]


def _plain_inputs(path, version, items, questions):
    """Processor inputs of a batch built by hand: the checkpoint's image and video processors, the tokenizer, and
    each placeholder expanded here (Qwen3-VL: one timestamped block per temporal grid)."""
    from transformers import AutoImageProcessor, AutoTokenizer, AutoVideoProcessor

    ip, vp, tok = (cls.from_pretrained(path) for cls in (AutoImageProcessor, AutoVideoProcessor, AutoTokenizer))
    images = [v for item in items for v in item if not hasattr(v, "frames")]
    videos = [v for item in items for v in item if hasattr(v, "frames")]
    out = {}
    if images:
        out.update(ip(images=images, return_tensors="pt"))
    if videos:
        got = vp(videos=[v.frames for v in videos], video_metadata=[v.metadata() for v in videos],
                 do_sample_frames=False, return_tensors="pt")
        out.update({k: got[k] for k in ("pixel_values_videos", "video_grid_thw")})
        if version == "2.5":  # seconds per temporal grid: 2 frames at the sampled rate
            out["second_per_grid_ts"] = torch.tensor(
                [2 / (len(v.indices) / v.info.total_frames * v.info.fps) for v in videos])
    image_grids = iter(out.get("image_grid_thw", []))
    video_grids = iter(zip(out.get("video_grid_thw", []), videos))

    def video_block(match):
        grid, video = next(video_grids)
        per_grid = int(grid[1:].prod()) // 4
        if version == "2.5":
            return "<|vision_start|>" + "<|video_pad|>" * (per_grid * int(grid[0])) + "<|vision_end|>"
        return "".join(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_grid + "<|vision_end|>"
                       for t in _timestamps(video.indices, video.info.fps))

    rows = []
    for item, question in zip(items, questions):
        parts = [{"type": "video" if hasattr(v, "frames") else "image"} for v in item]
        prompt = tok.apply_chat_template([{"role": "user", "content": [*parts, {"type": "text", "text": question}]}],
                                         add_generation_prompt=True, tokenize=False)
        prompt = re.sub(r"<\|vision_start\|><\|video_pad\|><\|vision_end\|>", video_block, prompt)
        prompt = re.sub(r"<\|image_pad\|>", lambda m: "<|image_pad|>" * (int(next(image_grids).prod()) // 4), prompt)
        rows.append(tok(prompt)["input_ids"])
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    image_id, video_id = tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    types = (ids == image_id).int() + 2 * (ids == video_id).int()
    return {**out, "input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}, tok


def _positions(version, ids, types, grids, intervals, tokens_per_second):
    """Qwen's M-RoPE rule for one unpadded row: text advances all three axes by one; a run of h x w merged tokens
    (per temporal grid t) at offset s puts token (t, r, c) at (s + t * interval, s + r, s + c), where a video's
    interval on Qwen2.5-VL is tokens_per_second x its seconds per grid (rounded down) and 1 on an image; text resumes
    at s + max(h, w). Qwen3-VL gives each temporal grid its own run (t = 0)."""
    out, cur, i, grids, intervals = [], 0, 0, list(grids), list(intervals)
    while i < len(ids):
        if types[i] == 0:
            out.append((cur, cur, cur))
            i, cur = i + 1, cur + 1
            continue
        t, h, w = grids.pop(0)
        step = intervals.pop(0) * tokens_per_second
        h, w = h // 2, w // 2
        out += [(cur + int(ti * step), cur + r, cur + c) for ti in range(t) for r in range(h) for c in range(w)]
        i, cur = i + t * h * w, cur + max(h, w)
    return torch.tensor(out).T


def _row_grids(version, inputs, types_row, videos_row):
    """The (t, h, w) grids and temporal intervals of a row's runs, in sequence order."""
    image_grids = [g.tolist() for g in inputs.get("image_grid_thw", [])]
    video_grids = [g.tolist() for g in inputs.get("video_grid_thw", [])]
    seconds = inputs.get("second_per_grid_ts", torch.ones(len(video_grids))).tolist()
    grids, intervals = [], []
    for kind in videos_row:
        if kind == "image":
            grids.append(image_grids.pop(0))
            intervals.append(1.0)
        elif version == "2.5":
            grids.append(video_grids.pop(0))
            intervals.append(seconds.pop(0))
        else:
            t, h, w = video_grids.pop(0)
            grids += [[1, h, w]] * t
            intervals += [1.0] * t
    return grids, intervals


def _shares(k, sizes):
    """"total": k evenly over the parts (the remainder to the first ones), what a small part cannot use to the rest."""
    budgets, left = [0] * len(sizes), min(k, sum(sizes))
    while left:
        open_parts = [i for i, s in enumerate(sizes) if budgets[i] < s]
        share, extra = divmod(left, len(open_parts))
        for rank, i in enumerate(open_parts):
            give = min(share + (rank < extra), sizes[i] - budgets[i])
            budgets[i] += give
            left -= give
    return budgets


def _expected(version, path, model, items, question, k):
    """Each item alone: the kept tokens (MMTok of DESIGN.md per temporal grid / image, `--budget total`: k over the
    inputs, each input's share over its grids) and the greedy answer on hand-built inputs_embeds with the unpruned
    positions sliced to the kept tokens."""
    inputs, tok = _plain_inputs(path, version, [items], [question])
    inputs = to_device(inputs)
    ids, types = inputs["input_ids"][0], inputs["mm_token_type_ids"][0]
    kinds = ["video" if hasattr(v, "frames") else "image" for v in items]
    embed = model.get_input_embeddings()
    with torch.no_grad():
        vision = {}
        if "pixel_values" in inputs:
            vision["image"] = _vision_by_hand(model, inputs)
        if "pixel_values_videos" in inputs:
            vision["video"] = _vision_by_hand(model, {"pixel_values": inputs["pixel_values_videos"],
                                                      "image_grid_thw": inputs["video_grid_thw"]})
        T = embed(torch.tensor(tok(WORDS, is_split_into_words=True, add_special_tokens=False)["input_ids"],
                               device=TEST_DEVICE))
        # each input's V, U, deepstack rows and its views (an image: one; a video: its temporal grids)
        per_input, starts = [], {"image": 0, "video": 0}
        grids = {"image": iter(inputs.get("image_grid_thw", [])), "video": iter(inputs.get("video_grid_thw", []))}
        for kind in kinds:
            t, h, w = next(grids[kind]).tolist()
            n, start = t * h * w // 4, starts[kind]
            V, U, deep = vision[kind]
            rows = slice(start, start + n)
            views = [range(g * n // t, (g + 1) * n // t) for g in range(t)] if kind == "video" else [range(n)]
            per_input.append((V[rows], U[rows], [d[rows] for d in deep] if deep else None, views))
            starts[kind] += n
        kept_all, offset = [], 0
        for share, (V, U, _, views) in zip(_shares(k, [len(V) for V, *_ in per_input]), per_input):
            for view_k, view in zip(_shares(share, [len(v) for v in views]), views):
                idx = torch.tensor(list(view), device=V.device)
                got = reference.mmtok_indices(V[idx], U[idx], T, view_k, tau_t=0.01) if view_k else []
                kept_all += [offset + view[j] for j in got]
            offset += len(V)
        kept_all = sorted(kept_all)
        V_all = torch.cat([V for V, *_ in per_input])
        positions = _positions(version, ids.tolist(), types.tolist(),
                               *_row_grids(version, inputs, types, kinds),
                               model.config.vision_config.to_dict().get("tokens_per_second", 1)).to(TEST_DEVICE)
        is_visual = types > 0
        rows = embed(ids)
        rows[is_visual] = V_all
        keep = ~is_visual
        keep[is_visual.nonzero().flatten()[kept_all]] = True
        deepstack = None
        if per_input[0][2] is not None:
            deepstack = [torch.cat([p[2][layer] for p in per_input])[kept_all] for layer in range(len(per_input[0][2]))]
        expected = _greedy(model, rows[keep], positions[:, keep], NEW, tok.eos_token_id, deepstack, is_visual[keep])
    return kept_all, expected, int(keep.sum())


def _flat(kept_indices, sizes):
    """`Answer.kept_indices` (per input) as indices over the item's tokens, inputs one after another."""
    out, offset = [], 0
    for idx, size in zip(kept_indices, sizes):
        out += [offset + i for i in idx]
        offset += size
    return out


# -- the runs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 10])
def test_pruned_video_equals_hand_built_reference(qwen, clip, k):
    version, path, engine, model = qwen
    video = decode(clip, FrameSampling(frames=8))
    kept, expected, length = _expected(version, path, model, [video], QUESTION, k)
    answer = engine.ask(video, QUESTION, tokens=k, max_new_tokens=NEW)
    assert answer.vision_inputs[0]["frames"] == 8 and answer.vision_inputs[0]["kind"] == "video"
    assert _flat(answer.kept_indices, [answer.vision_total]) == kept and answer.vision_kept == k
    assert answer.output_ids == expected
    assert answer.prompt_pruned == length


def test_pruned_two_images_and_a_video_equal_hand_built_reference(qwen, clip):
    version, path, engine, model = qwen
    items = [noise_image(31, (140, 100)), decode(clip, FrameSampling(frames=6)), noise_image(32, (100, 160))]
    kept, expected, length = _expected(version, path, model, items, QUESTION, 9)
    answer = engine.ask(items, QUESTION, tokens=9, max_new_tokens=NEW)
    sizes = [entry["total"] for entry in answer.vision_inputs]
    assert [entry["kind"] for entry in answer.vision_inputs] == ["image", "video", "image"]
    assert [entry["kept"] for entry in answer.vision_inputs] == [3, 3, 3]
    assert _flat(answer.kept_indices, sizes) == kept
    assert answer.output_ids == expected and answer.prompt_pruned == length


@pytest.mark.parametrize("method,k", [("full", 1), ("mmtok", 10_000)])
def test_unpruned_video_and_two_images_equal_plain_generate(qwen, clip, method, k):
    """k >= n and `full` feed exactly what plain `generate` reads on the same frames and images (a batch of a video,
    two images, and a video between two images)."""
    version, path, engine, model = qwen
    video = decode(clip, FrameSampling(frames=7))  # odd: the processor repeats the last frame to fill the grid
    items = [[video], [noise_image(41, (120, 90)), noise_image(42, (90, 150))],
             [noise_image(43), video, noise_image(44, (100, 100))]]
    questions = [QUESTION, "Which photo is newer?", "What happens after the door opens?"]
    inputs, tok = _plain_inputs(path, version, items, questions)
    with torch.no_grad():
        out = model.generate(**to_device(inputs), max_new_tokens=NEW, do_sample=False)
    answers = engine.run(items, questions, method=method, tokens=k, max_new_tokens=NEW)
    for row, answer in enumerate(answers):
        assert answer.output_ids == _new_tokens(out[row], inputs["input_ids"].shape[1], tok.eos_token_id)
        assert answer.vision_kept == answer.vision_total
        assert answer.prompt_pruned == answer.prompt_unpruned == int(inputs["attention_mask"][row].sum())


def test_mixed_batch_equals_each_item_alone(qwen, clip):
    _, _, engine, _ = qwen
    video = decode(clip, FrameSampling(frames=8))
    items = [video, [noise_image(51, (130, 90)), noise_image(52, (90, 130))], noise_image(53, (150, 150))]
    questions = [QUESTION, "Which photo shows the newer car?", "Is there a red circle?"]
    for budgets in ([5, 7, 4], [10_000, 3, 2]):
        batch = engine.run(items, questions, tokens=budgets, max_new_tokens=NEW)
        for item, question, k, got in zip(items, questions, budgets, batch):
            alone = engine.ask(item, question, tokens=k, max_new_tokens=NEW)
            assert got.kept_indices == alone.kept_indices and got.kept_order == alone.kept_order
            assert got.output_ids == alone.output_ids and got.prompt_pruned == alone.prompt_pruned
            assert got.vision_inputs == alone.vision_inputs


def test_budget_conventions_over_temporal_grids(qwen, clip):
    """total: k over the grids evenly; per-view: k on every grid; global: a token of every grid, then the rest."""
    _, _, engine, _ = qwen
    video = decode(clip, FrameSampling(frames=8))  # 4 temporal grids
    per_grid = engine.ask(video, QUESTION, method="full", max_new_tokens=1).vision_total // 4

    def grids(answer):
        return sorted({i // per_grid for i in answer.kept_indices[0]}), answer.vision_kept

    assert grids(engine.ask(video, QUESTION, tokens=6, budget="total", max_new_tokens=1)) == ([0, 1, 2, 3], 6)
    assert grids(engine.ask(video, QUESTION, tokens=2, budget="per-view", max_new_tokens=1)) == ([0, 1, 2, 3], 8)
    got = engine.ask(video, QUESTION, tokens=5, budget="global", max_new_tokens=1)
    assert grids(got) == ([0, 1, 2, 3], 5)
    assert sorted(i // per_grid for i in got.kept_order[0][:4]) == [0, 1, 2, 3]  # the grids' tokens come first
    few = engine.ask(video, QUESTION, tokens=2, budget="global", max_new_tokens=1)
    assert grids(few) == ([1, 3], 2)  # fewer tokens than grids: evenly spaced ones, the centre of each half


def test_evs_on_a_video_keeps_what_vllm_keeps(qwen, clip):
    """`--method evs` through the engine: the tokens vLLM's EVS keeps (a transcription, test_baselines.py) on the same
    merged video tokens V, for the pruning rates whose token counts are asked for; images alone are refused."""
    from .test_baselines import _vllm_evs_mask

    _, _, engine, _ = qwen
    video = decode(clip, FrameSampling(frames=8))
    prepared = engine.prepare([video], [QUESTION])
    V = engine.adapter.encode(prepared).vision[0]
    thw = prepared.inputs["video_grid_thw"][0].tolist()
    for q in (0.5, 0.8):
        mask = _vllm_evs_mask(V.cpu(), thw, 2, q)
        answer = engine.ask(video, QUESTION, method="evs", tokens=int(mask.sum()), max_new_tokens=1)
        assert answer.kept_indices[0] == mask.nonzero().flatten().tolist()
    with pytest.raises(MmtokError, match="evs chooses among a video's frames"):
        engine.ask(noise_image(1), QUESTION, method="evs", max_new_tokens=1)


def test_cache_keys_videos_by_their_sampled_frames(qwen, clip):
    """A cached item is the same clip sampled alike (or the same images in the same order); the rows the cache lacks
    are cut out of a batch of videos and images and encoded alone; answers equal the uncached engine's."""
    from mmtok_cli.engine import Engine

    _, path, uncached, _ = qwen
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    eight, six = decode(clip, FrameSampling(frames=8)), decode(clip, FrameSampling(frames=6))
    pair = [noise_image(61, (120, 90)), noise_image(62, (90, 120))]
    first = [eight, pair, pair[0]]
    second = [pair[0], six, list(reversed(pair)), eight, pair]
    questions = [QUESTION, "Which photo is newer?", "Is it red?", "What happens?", "Which is larger?"]
    engine.run(first, questions[:3], tokens=5, max_new_tokens=NEW)
    got = engine.run(second, questions, tokens=5, max_new_tokens=NEW)
    assert [a.vision_cached for a in got] == [True, False, False, True, True]
    want = uncached.run(second, questions, tokens=5, max_new_tokens=NEW)
    for a, b in zip(got, want):
        assert a.output_ids == b.output_ids and a.kept_indices == b.kept_indices


# -- the commands -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_qwen_vl

    path = build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen25") / "tiny-qwen2.5", version="2.5", seed=4)
    return path, Engine(str(path), device=TEST_DEVICE, dtype="float32", cache_mb=0)


def test_ask_answers_about_a_video(qwen25, tmp_path):
    """`mmtok ask clip.mp4 "..." --model <tiny qwen2.5-vl> --tokens 64 --frames 8`, as the engine answers it."""
    import json

    from typer.testing import CliRunner

    from mmtok_cli.cli import app

    path, engine = qwen25
    clip = write_video(tmp_path / "clip.mp4", frames=12, size=(224, 168), seed=9)
    result = CliRunner().invoke(app, ["ask", str(clip), "What happens?", "--model", str(path), "--tokens", "64",
                                      "--frames", "8", "--max-new-tokens", str(NEW), "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    want = engine.ask(decode(clip, FrameSampling(frames=8)), "What happens?", tokens=64, max_new_tokens=NEW)
    assert record["video"] == str(clip) and record["answer"] == want.answer
    assert record["vision_tokens"]["inputs"] == [{"kind": "video", "total": want.vision_total, "kept": 64,
                                                  "frames": 8}]
    assert record["kept_indices"] == want.kept_indices


def test_batch_answers_videos_and_fails_bad_ones_alone(qwen25, clip, tmp_path, monkeypatch):
    """A JSONL of a video, two images and a video, an image, and bad videos (corrupt, audio only, missing, a URL over
    the byte cap): each bad one gets its error record, the others the answers they get alone."""
    import functools
    import http.server
    import json
    import shutil
    import threading

    import av
    from typer.testing import CliRunner

    from mmtok_cli import video as video_module
    from mmtok_cli.cli import app

    path, engine = qwen25
    shutil.copy(clip, tmp_path / "clip.mp4")
    for i in range(2):
        noise_image(80 + i, (110, 80)).save(tmp_path / f"img{i}.png")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with av.open(str(tmp_path / "sound.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
    monkeypatch.setattr(video_module, "MAX_DOWNLOAD_BYTES", (tmp_path / "clip.mp4").stat().st_size - 1)
    lines = [
        {"id": "v", "video": "clip.mp4", "question": QUESTION},
        {"id": "mix", "images": ["img0.png", "img1.png"], "video": "clip.mp4", "question": "What changed?"},
        {"id": "i", "image": "img1.png", "question": "Is it red?"},
        {"id": "corrupt", "video": "corrupt.mp4", "question": "q"},
        {"id": "audio", "video": "sound.mp4", "question": "q"},
        {"id": "missing", "videos": ["clip.mp4", "gone.mp4"], "question": "q"},
        {"id": "url", "video": url, "question": "q"},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    try:
        result = CliRunner().invoke(app, ["batch", str(data), "--model", str(path), "--tokens", "12", "--frames", "6",
                                          "--max-new-tokens", str(NEW), "--batch-size", "4", "--cache-mb", "0"])
    finally:
        server.shutdown()
    assert result.exit_code == 1  # some items failed
    recs = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert list(recs) == [line["id"] for line in lines]
    six = decode(clip, FrameSampling(frames=6))
    from mmtok_cli.io import load_image

    images = [load_image(str(tmp_path / f"img{i}.png")) for i in range(2)]
    for key, entry, question in [("v", six, QUESTION), ("mix", [*images, six], "What changed?"),
                                 ("i", images[1], "Is it red?")]:
        want = engine.ask(entry, question, tokens=12, max_new_tokens=NEW)
        assert recs[key]["error"] is None and recs[key]["answer"] == want.answer, key
    assert recs["mix"]["images"] == ["img0.png", "img1.png"] and recs["mix"]["video"] == "clip.mp4"
    assert [e["kind"] for e in recs["mix"]["vision_tokens"]["inputs"]] == ["image", "image", "video"]
    assert "inputs" not in recs["i"]["vision_tokens"]
    for key, message in [("corrupt", "could not be opened as a video"), ("audio", "no video stream"),
                         ("missing", "video not found: gone.mp4"), ("url", "download limit")]:
        assert message in recs[key]["error"] and "\n" not in recs[key]["error"], (key, recs[key]["error"])


def test_batch_lets_frames_go_after_preprocessing_and_answers_alike(qwen25, clip, tmp_path):
    """The loader drops an item's pixels once its chunk is preprocessed (issue 24): stand-ins keep each row's
    layout and a video's timing, `random` draws from seeds taken before, so answers equal the engine's own."""
    import json
    import shutil

    from mmtok_cli.batch import BatchOptions, BatchRunner
    from mmtok_cli.io import load_image, read_jsonl

    path, engine = qwen25
    shutil.copy(clip, tmp_path / "clip.mp4")
    noise_image(82, (90, 70)).save(tmp_path / "img.png")
    lines = [json.dumps({"video": "clip.mp4", "question": QUESTION}),
             json.dumps({"images": ["img.png"], "video": "clip.mp4", "question": "What changed?"})]
    four = decode(clip, FrameSampling(frames=4))
    entries = [four, [load_image(str(tmp_path / "img.png")), four]]
    for method in ("random", "mmtok"):
        got, chunks = [], []
        runner = BatchRunner(engine, BatchOptions(method=method, tokens=10, max_new_tokens=NEW, batch_size=2,
                                                  frame_sampling=FrameSampling(frames=4)), base=tmp_path)
        runner.run(read_jsonl(lines), got.extend, reuse=chunks)
        assert chunks and all(c.prepared.released for c in chunks)
        assert not any(chunks[0].prepared.visuals[0][0].frames.strides)  # the stand-in's frames hold no memory
        want = engine.run(entries, [QUESTION, "What changed?"], method=method, tokens=10, max_new_tokens=NEW)
        assert [r["answer"] for r in got] == [a.answer for a in want], method
        assert [r["vision_tokens"]["inputs"] for r in got] == [a.vision_inputs for a in want]


def test_show_draws_a_video_as_a_contact_sheet(qwen25, clip, tmp_path):
    """A panel per temporal grid, each grid's tokens covering its frame once over; `mmtok show` writes the sheet."""
    from typer.testing import CliRunner

    from mmtok_cli import show
    from mmtok_cli.cli import app

    path, engine = qwen25
    video = decode(clip, FrameSampling(frames=8))
    prepared = engine.prepare([[noise_image(90), video]], [QUESTION])
    image_regions, video_regions = engine.adapter.input_regions(prepared, 0)
    assert video_regions.panels == ("frame 0", "frame 2", "frame 4", "frame 6")  # 2 frames per grid
    per_grid = len(video_regions.boxes) // 4
    for grid in range(4):
        boxes = [b for b, p in zip(video_regions.boxes, video_regions.panel) if p == grid]
        assert len(boxes) == per_grid
        assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == pytest.approx(video.width * video.height)
    sheet, results = show.show(engine, [noise_image(90), video], QUESTION, ["mmtok"], tokens=8, max_new_tokens=1)
    assert results[0][1].vision_inputs[1]["frames"] == 8 and sheet.height > show.INPUT_SIDE + show.FRAME_SIDE
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["show", str(clip), QUESTION, "--model", str(path), "--tokens", "8",
                                      "--frames", "8", "--max-new-tokens", "1", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.exists() and result.stdout.startswith("mmtok: ")


def test_profile_measures_a_generated_clip(qwen25):
    """`mmtok profile --video-frames N`: every budget asks about the same N-frame clip, 2 frames per temporal grid."""
    from mmtok_cli.profile import profile

    _, engine = qwen25
    report = profile(engine, budgets=["full", 8], new_tokens=2, warmup=0, repeats=1, video_frames=4)
    full, pruned = report["results"]
    assert report["video_frames"] == 4 and full["vision_tokens"]["kept"] == full["vision_tokens"]["total"]
    assert full["vision_tokens"]["total"] % 2 == 0 and pruned["vision_tokens"]["kept"] == 8
    assert pruned["prompt_tokens"]["pruned"] < full["prompt_tokens"]["pruned"]


def test_lmms_eval_requests_hand_over_video_paths(qwen25, clip):
    """As lmms-eval's video tasks (videomme, mvbench) do: the request's visual is the video's path; the answer is the
    engine's on the frames the model_args choose."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from mmtok_cli.lmms.model import Mmtok

    path, engine = qwen25
    model = Mmtok(pretrained=str(path), tokens=12, frames=6, device=TEST_DEVICE, dtype="float32", batch_size=2)
    docs = [{"video": str(clip), "text": "What happens?"}, {"video": str(clip), "text": QUESTION}]
    model.task_dict = {"t": {"test": docs}}
    requests = [Instance("generate_until", (d["text"], {"max_new_tokens": NEW}, lambda doc: [doc["video"]], i, "t",
                                            "test"), idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})
                for i, d in enumerate(docs)]
    six = decode(clip, FrameSampling(frames=6))
    assert model.generate_until(requests) == [engine.ask(six, d["text"], tokens=12, max_new_tokens=NEW).answer
                                              for d in docs]

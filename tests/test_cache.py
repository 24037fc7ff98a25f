"""Encode each image once: the vision-token cache gives the uncached answers, encodes each image once per batch and
across batches, keys by pixels, stays within its bound, and reaches `mmtok batch` and `mmtok eval`."""

import json
import random

import pytest
from typer.testing import CliRunner

from mmtok_cli.cache import VisionCache, image_key, tensor_bytes
from mmtok_cli.cli import app
from mmtok_cli.engine import Engine
from mmtok_cli.tiny import BUILDERS

from .conftest import noise_image
from .device import TEST_DEVICE

runner = CliRunner()
IMAGES = [noise_image(seed, size) for seed, size in [(1, (160, 120)), (2, (90, 200)), (3, (300, 64)), (4, (64, 64))]]
QUESTIONS = ["what is it ?", "is there a dog ?", "what colour is the sky ?", "how many cats ?", "where is it ?",
             "describe the picture", "is it red ?", "what is on the left ?"]


def _sequence(seed: int) -> list[list[tuple[int, str]]]:
    """Two batches of (image, question) with every image repeated, in an order drawn from `seed`."""
    items = [(i % len(IMAGES), q) for i, q in enumerate(QUESTIONS)]
    random.Random(seed).shuffle(items)
    return [items[:5], items[5:]]


def _answers(engine: Engine, sequence, method: str) -> list:
    got = []
    for batch in sequence:
        got += engine.run([IMAGES[i] for i, _ in batch], [q for _, q in batch], tokens=5, method=method,
                          max_new_tokens=3)
    return got


@pytest.mark.parametrize("family", list(BUILDERS))
def test_answers_equal_uncached_ones_in_any_order_with_evictions(family, tmp_path):
    options = {"pan_and_scan": True} if family == "gemma3" else {}  # crops: images of several views
    engine = Engine(str(BUILDERS[family](tmp_path / family, seed=0, **options)), device=TEST_DEVICE, dtype="float32",
                    cache_mb=0)
    adapter = engine.adapter
    entry = tensor_bytes(adapter.encode(engine.prepare(IMAGES[:1], QUESTIONS[:1])).split()[0])
    methods = ["mmtok", "full"] + (["visionzip"] if family in ("llava", "llava-next") else [])
    for seed in (0, 1):
        sequence = _sequence(seed)
        for method in methods:
            engine.cache = None
            plain = _answers(engine, sequence, method)
            engine.cache = VisionCache(int(2.5 * entry))  # about two images: evictions between the batches
            cached = _answers(engine, sequence, method)
            for a, b in zip(plain, cached, strict=True):
                assert (b.output_ids, b.kept_indices, b.kept_order, b.vision_total, b.vision_kept, b.prompt_pruned) \
                    == (a.output_ids, a.kept_indices, a.kept_order, a.vision_total, a.vision_kept, a.prompt_pruned)
                assert not a.vision_cached
            first = sequence[0]
            # within the first batch, an image met before is never encoded again
            assert [b.vision_cached for b in cached[: len(first)]] == [
                any(j == i for j, _ in first[:row]) for row, (i, _) in enumerate(first)]
            stats = engine.cache.stats
            assert stats.hits + stats.misses == len(QUESTIONS) and stats.misses < len(QUESTIONS) and stats.evictions
            assert engine.cache.bytes <= engine.cache.max_bytes


def test_one_vision_pass_per_distinct_image_then_none(tiny_llava):
    engine = Engine(str(tiny_llava), device=TEST_DEVICE, dtype="float32", cache_mb=64)
    calls = []
    hook = engine.adapter.model.model.vision_tower.register_forward_hook(
        lambda module, args, kwargs_or_out: calls.append(args[0].shape[0]))
    try:
        pictures = [IMAGES[0], IMAGES[1], IMAGES[0], IMAGES[0], IMAGES[1], IMAGES[0]]
        first = engine.run(pictures, QUESTIONS[:6], tokens=4, max_new_tokens=2)
        assert calls == [2]  # one pass, two images
        assert [a.vision_cached for a in first] == [False, False, True, True, True, True]
        again = engine.run(pictures[:3], QUESTIONS[:3], tokens=4, max_new_tokens=2)
        assert calls == [2] and all(a.vision_cached for a in again)
        engine.set_cache(0)
        engine.run(pictures[:3], QUESTIONS[:3], tokens=4, max_new_tokens=2)
        assert calls == [2, 3]  # without the cache every item encodes its own image
    finally:
        hook.remove()


def test_key_is_the_pixels_not_the_file():
    copy = IMAGES[0].copy()
    assert image_key(copy) == image_key(IMAGES[0])
    assert image_key(IMAGES[0]) != image_key(IMAGES[1])
    assert image_key(IMAGES[0].convert("L")) != image_key(IMAGES[0])  # same size, other pixels
    assert image_key(IMAGES[0], "scan") != image_key(IMAGES[0])  # settings that change the tokens


def test_bound_evicts_least_recently_used_and_skips_what_cannot_fit():
    import torch

    cache = VisionCache(300)
    block = torch.zeros(25)  # 100 bytes
    for key in "abc":
        cache.put(key, [block.clone()])
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", [block.clone()])
    assert "b" not in cache and {"a", "c", "d"} <= set(cache._entries) and cache.bytes == 300
    assert cache.stats.evictions == 1
    cache.put("huge", [torch.zeros(100)])  # 400 bytes > the bound: not stored, nothing evicted for it
    assert "huge" not in cache and len(cache) == 3
    with pytest.raises(ValueError):
        VisionCache(-1)


def test_gemma_pan_and_scan_switch_is_part_of_the_key(tmp_path):
    engine = Engine(str(BUILDERS["gemma3"](tmp_path / "gemma", seed=0)), device=TEST_DEVICE, dtype="float32")
    long = noise_image(7, (300, 64))
    plain = engine.ask(long, "what is it ?", tokens=4, max_new_tokens=2)
    engine.adapter.pan_and_scan = True
    scanned = engine.ask(long, "what is it ?", tokens=4, max_new_tokens=2)
    assert not scanned.vision_cached and scanned.vision_total > plain.vision_total


def test_batch_records_say_cached_and_answers_match_no_cache(tiny_llava, tmp_path):
    IMAGES[0].save(tmp_path / "a.png")
    IMAGES[0].save(tmp_path / "a-copy.png")  # other file, same pixels
    IMAGES[1].save(tmp_path / "b.png")
    names = ["a.png", "b.png", "a-copy.png", "b.png", "a.png"]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"image": n, "question": q}) + "\n" for n, q in zip(names, QUESTIONS)))
    common = ["batch", str(data), "--model", str(tiny_llava), "--device", TEST_DEVICE, "--dtype", "float32", "--tokens",
              "4", "--max-new-tokens", "3", "--batch-size", "2"]
    cached = runner.invoke(app, common)
    plain = runner.invoke(app, [*common, "--cache-mb", "0"])
    assert cached.exit_code == plain.exit_code == 0, cached.stderr + plain.stderr
    got = [json.loads(line) for line in cached.stdout.splitlines()]
    want = [json.loads(line) for line in plain.stdout.splitlines()]
    assert [r["vision_tokens"]["cached"] for r in got] == [False, False, True, True, True]
    assert not any(r["vision_tokens"]["cached"] for r in want)
    assert [r["answer"] for r in got] == [r["answer"] for r in want]
    assert "3 items reused an image's vision tokens" in cached.stderr
    bad = runner.invoke(app, [*common, "--cache-mb", "-1"])
    assert bad.exit_code == 2 and "--cache-mb must be 0" in bad.stderr


def test_eval_encodes_each_image_once_for_all_rows(tiny_llava, tmp_path):
    from mmtok_cli.synth import generate

    folder = tmp_path / "synth"
    generate(folder, 3, seed=0)
    data = folder / "questions.jsonl"
    images = {json.loads(line)["image"] for line in data.read_text().splitlines()}

    def run(*extra: str) -> dict:
        out = tmp_path / "eval.json"
        result = runner.invoke(app, ["eval", str(data), "--model", str(tiny_llava), "--device", TEST_DEVICE, "--tokens",
                                     "8,2", "--methods", "mmtok,random,divprune", "--max-new-tokens", "2",
                                     "--batch-size", "2", "--json", str(out), *extra])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())

    cached, plain = run(), run("--cache-mb", "0")
    assert cached["cache"]["misses"] == len(images) and plain["cache"] is None
    for a, b in zip(cached["results"], plain["results"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("items_per_s", "vision_cached")} == \
            {k: v for k, v in b.items() if k not in ("items_per_s", "vision_cached")}
    assert cached["results"][0]["vision_cached"] < cached["items"]  # full, first, met the images first
    assert all(r["vision_cached"] == cached["items"] for r in cached["results"][1:])

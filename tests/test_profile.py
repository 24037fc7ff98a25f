"""The profiler's bookkeeping on a tiny model, the forced new-token count, and the --arch presets' processors."""

import json
import statistics
import time

import pytest
import torch
from transformers import AutoConfig
from typer.testing import CliRunner

from mmtok_cli import profile as prof
from mmtok_cli.archs import ARCHS, build_config
from mmtok_cli.cli import app
from mmtok_cli.engine import Engine
from mmtok_cli.errors import UsageError
from mmtok_cli.models import adapter_class

from .conftest import noise_image
from .device import TEST_DEVICE

runner = CliRunner()


@pytest.fixture(scope="module")
def profiled(engine):
    """The report of a profile run, and each `Engine.run` call it made: the batch, the budget, the first answer's
    timings and a clock around the call (in order: a warm-up round, then two repeats, each over every config)."""
    calls = []
    run = engine.run

    def recorded(images, questions, **options):
        start = time.perf_counter()
        answers = run(images, questions, **options)
        tokens = "full" if options["method"] == "full" else options["tokens"]
        calls.append({"config": (tokens, len(images)), "timings": answers[0].timings_ms,
                      "wall_ms": (time.perf_counter() - start) * 1e3})
        return answers

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "run", recorded)
        report = prof.profile(engine, budgets=[8, 16], batch_sizes=[1, 2], new_tokens=3, warmup=1, repeats=2,
                              image=noise_image(3))
    return report, calls


@pytest.fixture(scope="module")
def report(profiled):
    return profiled[0]


def test_every_configuration_has_every_stage(profiled):
    """Each stage's median and spread are those of the engine's own timings over the repeats (warm-up left out)."""
    report, calls = profiled
    configs = [("full", 1), (8, 1), (16, 1), ("full", 2), (8, 2), (16, 2)]
    assert [(r["tokens"], r["batch_size"]) for r in report["results"]] == configs
    assert [c["config"] for c in calls] == configs * 3
    for i, row in enumerate(report["results"]):
        runs = [calls[len(configs) * round_ + i] for round_ in (1, 2)]
        values = {stage: [c["timings"][stage] for c in runs] for stage in ("preprocess", "vision", "select", "prefill")}
        values["decode_per_token"] = [c["timings"]["decode"] / 2 for c in runs]  # 3 new tokens: 2 after the first
        assert set(row["stages_ms"]) == set(values) and all(v >= 0 for v in row["stages_ms"].values())
        for stage, got in values.items():
            assert row["stages_ms"][stage] == round(statistics.median(got), 3)
            assert row["stages_ms_spread"][stage] == [round(min(got), 3), round(max(got), 3)]
        # the profiler's clock is around the engine's call, per item of the batch
        walls = [c["wall_ms"] / row["batch_size"] for c in runs]
        assert row["end_to_end_ms_spread"][0] >= round(min(walls), 3) - 1e-3
        assert row["end_to_end_ms"] >= round(statistics.median(walls), 3) - 1e-3
        assert row["end_to_end_ms"] >= sum(row["stages_ms"][s] for s in ("preprocess", "vision", "select", "prefill"))
        assert row["runs"] == 2 and (row["peak_memory_mb"] is None) == (TEST_DEVICE == "cpu")  # tracked on CUDA only
        assert row["vision_tokens"] == {"kept": 64 if row["tokens"] == "full" else row["tokens"], "total": 64}
    assert report["device"] == TEST_DEVICE and report["dtype"] == "float32" and report["new_tokens"] == 3
    assert set(report["versions"]) >= {"torch", "transformers"}
    json.dumps(report)  # the --json document


def test_speedup_is_the_ratio_of_measured_medians(report):
    for row in report["results"]:
        full = next(r for r in report["results"] if r["tokens"] == "full" and r["batch_size"] == row["batch_size"])
        assert row["speedup"] == pytest.approx(full["end_to_end_ms"] / row["end_to_end_ms"], rel=1e-3)
        assert row["items_per_s"] == pytest.approx(1e3 / row["end_to_end_ms"], rel=1e-3)
    assert {r["speedup"] for r in report["results"] if r["tokens"] == "full"} == {1.0}


def test_decode_per_token_is_decode_over_the_tokens_after_the_first(engine):
    cfg = prof._Config(8, 1)
    runs = [prof._measure_once(engine, cfg, noise_image(3), "What is here?", 5) for _ in range(3)]
    cfg.runs = runs
    (row,) = prof._report(engine, [prof._Config("full", 1, runs=runs), cfg], new_tokens=5, warmup=0, repeats=3,
                          image=noise_image(3), question="What is here?")["results"][1:]
    assert row["stages_ms"]["decode_per_token"] == pytest.approx(statistics.median(r["decode"] for r in runs) / 4,
                                                                 abs=1e-3)


def test_ignore_eos_generates_exactly_n_tokens(engine):
    image, question = noise_image(4), "What is here?"
    first = engine.ask(image, question, tokens=8, max_new_tokens=1).output_ids[0]
    config = engine.adapter.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = first  # the model's first answer token now ends generation at once
    try:
        assert len(engine.ask(image, question, tokens=8, max_new_tokens=6).output_ids) == 1
        batch = engine.run([image, noise_image(5)], [question] * 2, tokens=8, max_new_tokens=6, ignore_eos=True)
        assert [len(a.output_ids) for a in batch] == [6, 6]
    finally:
        config.eos_token_id = saved


def test_budgets_and_batch_sizes_parse():
    assert prof.parse_budgets("576, 64,full,64") == ["full", 576, 64]
    assert prof.parse_batch_sizes("1,8") == [1, 8]
    for bad in ("64,0", "x"):
        with pytest.raises(UsageError):
            prof.parse_budgets(bad)
    with pytest.raises(UsageError):
        prof.parse_batch_sizes("1,-2")


def test_random_weights_build_the_checkpoint_architecture(tiny_llava, engine):
    fresh = Engine(str(tiny_llava), device=TEST_DEVICE, dtype="float32", random_weights=True)
    assert fresh.random_weights and type(fresh.adapter.model) is type(engine.adapter.model)
    assert fresh.adapter.model.config.to_dict() == engine.adapter.model.config.to_dict()
    loaded = dict(engine.adapter.model.named_parameters())
    for name, param in fresh.adapter.model.named_parameters():
        assert param.shape == loaded[name].shape and torch.isfinite(param).all()
    answer = fresh.ask(noise_image(3), "What is here?", tokens=8, max_new_tokens=4)
    assert answer.vision_kept == 8 and answer.output_ids


# Vision tokens each preset's processor makes of the default 672 x 672 image, as the real checkpoints do.
PRESET_TOKENS = {
    "llava-1.5-7b": 576, "llava-1.5-13b": 576, "cpu-small": 576,
    # LLaVA-NeXT: the base view, a 2x2 grid of crops, and one newline per row of the 48-token-wide grid
    "llava-v1.6-vicuna-7b": 576 + 4 * 576 + 48, "llava-v1.6-vicuna-13b": 576 + 4 * 576 + 48,
    "qwen2.5-vl-3b": 24 * 24, "qwen2.5-vl-7b": 24 * 24, "qwen3-vl-8b": 21 * 21,
    "gemma-3-12b": 256, "cpu-small-gemma3": 256,  # 64 x 64 SigLIP patches pooled to 16 x 16, at any image size
}
PRESET_TOKENS |= {"qwen3.5-9b": 21 * 21, "cpu-small-qwen3.5": 21 * 21}  # patch 16, 2x2 merge, as Qwen3-VL
# InternVL3: the square 672-px image is a 2x2 grid of 448-px tiles plus the thumbnail, 256 tokens each
PRESET_TOKENS.update({"internvl3-8b": 5 * 256, "cpu-small-internvl": 5 * 256})
# LLaVA-OneVision: the base view (27 x 27 SigLIP patches), a 2x2 grid of 384-px crops (54 x 54 tokens, fewer than
# 9 views' worth, so not shrunk) and one newline per row
PRESET_TOKENS.update({name: 729 + 54 * 54 + 54 for name in ("llava-onevision-qwen2-7b", "cpu-small-onevision")})


@pytest.mark.parametrize("name", list(ARCHS))
def test_arch_folder_processor_matches_the_real_resolution(name, tmp_path):
    folder = prof.write_arch_folder(name, tmp_path)
    config = build_config(name)
    adapter_cls = adapter_class(config.model_type)
    processor = adapter_cls.load_processor(str(folder))
    adapter = adapter_cls.__new__(adapter_cls)
    adapter.processor = processor
    saved = AutoConfig.from_pretrained(folder)
    prompt = adapter.prompt("Is there a dog?")
    ids = processor(images=[prof.default_image()], text=[prompt], return_tensors="pt")["input_ids"]
    assert int((ids == saved.image_token_id).sum()) == PRESET_TOKENS[name]
    assert saved.text_config.vocab_size == config.text_config.vocab_size  # the real vocabulary: real LM head cost


def test_cli_profile_writes_json_table_and_plot(tiny_llava, tmp_path):
    out, png = tmp_path / "out.json", tmp_path / "speed.png"
    result = runner.invoke(app, ["profile", "--model", str(tiny_llava), "--tokens", "8", "--batch-size", "1,2",
                                 "--new-tokens", "2", "--warmup", "0", "--repeats", "1", "--device", TEST_DEVICE,
                                 "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["tokens"], r["batch_size"]) for r in data["results"]] == [("full", 1), (8, 1), ("full", 2), (8, 2)]
    assert "speedup" in result.stdout and "8/64" in result.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--arch", "cpu-small", "--model", "x"], "not both"),
    (["--arch", "llava-9"], "unknown --arch 'llava-9'"),
    (["--tokens", "64,zero"], "--tokens takes"),
    (["--repeats", "0"], "--repeats"),
    (["--json", "/no/such/folder/out.json"], "no folder /no/such/folder"),
])
def test_cli_profile_rejects_bad_options(args, message):
    result = runner.invoke(app, ["profile", *args])
    assert result.exit_code == 2 and message in result.stderr

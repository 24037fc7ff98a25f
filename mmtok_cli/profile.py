"""`mmtok profile`: time every stage of answering, per vision-token budget and batch size.

Each configuration (a budget or `full`, times a batch size) answers the same image and question
with exactly `new_tokens` generated tokens (EOS ignored), so every run does a fixed amount of work.
Configurations are measured round-robin -- one run of each, then the next repeat -- so a machine
whose load drifts (shared CPUs, clocks) slows every configuration alike and the speedups, ratios of
medians from the same run, stay fair. Warm-up rounds are excluded.

All times are per item: the item's share of its batch's wall-clock time (as in `mmtok ask --json`),
so at batch size B the whole batch's prefill took B x `prefill`. `end_to_end_ms` is measured
around the whole `Engine.run` call (processor, vision, selection, generation, decoding the text);
the stages are the engine's own timings inside it. Decoding the image file is not included.

`--video-frames N` asks about a generated clip of N frames at 448 x 448 instead (the video families: Qwen2.5-VL,
Qwen3-VL, Qwen3.5; transformers' video processors need torchvision); decoding a video file is not included either
(benchmarks/video.py measures that).

`--arch NAME` profiles a real architecture from `archs.py` with random weights: its config plus a
processor (the family's real image processor at the real resolution, and the offline tokenizer
from `tiny.py`) are written to a temporary folder and loaded through the normal loading path, with
the weights built at random instead of read. Timing does not depend on weight values once the
number of generated tokens is forced.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .archs import ARCHS, build_config
from .engine import Engine
from .errors import UsageError

STAGES = ("preprocess", "vision", "select", "prefill", "decode_per_token")
DEFAULT_TOKENS = "576,192,128,64,32,16,4"
# POPE-style, as in the paper's headline speed measurement: a yes/no question and LLaVA's short-answer prompt.
DEFAULT_QUESTION = "Is there a dog in the image?\nAnswer the question using a single word or phrase."
IMAGE_SIZE = 672  # LLaVA-NeXT's largest square grid (2880 tokens); 576 merged tokens for Qwen2.5-VL

Budget = int | str  # a token count, or "full"


def parse_budgets(text: str) -> list[Budget]:
    """'576,64' -> ['full', 576, 64]: `full` (no pruning) first and always present, then distinct budgets."""
    budgets: list[Budget] = ["full"]
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("", "full"):
            continue
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"--tokens takes positive integers or 'full', comma-separated (got '{part}')")
        if int(part) not in budgets:
            budgets.append(int(part))
    return budgets


def parse_batch_sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"--batch-size takes positive integers, comma-separated (got '{part}')")
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


def default_image(size: int = IMAGE_SIZE) -> Image.Image:
    """A deterministic, structured RGB test image (timing does not depend on its content)."""
    ramp = Image.linear_gradient("L").resize((size, size))
    return Image.merge("RGB", (ramp, ramp.rotate(90), Image.radial_gradient("L").resize((size, size))))


VIDEO_SIZE = 448
"""Frame side of --video-frames' clip: 16 frames are 2,048 merged tokens on Qwen2.5-VL (8 grids of 16 x 16)."""
VIDEO_FPS = 2.0


def default_video(frames: int, size: int = VIDEO_SIZE) -> Any:
    """A deterministic clip of `frames` frames: the test image panning one pixel column per frame (so consecutive
    frames differ a little, as a real clip's do), at VIDEO_FPS frames per second."""
    import numpy as np

    from .video import Video, VideoInfo

    base = np.asarray(default_image(size + frames))
    clip = np.stack([base[:size, i : i + size] for i in range(frames)])
    return Video(frames=clip, indices=list(range(frames)), info=VideoInfo(frames, VIDEO_FPS, size, size),
                 source="generated")


def _qwen_vl_processor(config: Any, path: Path) -> Any:
    from transformers import Qwen2VLImageProcessorPil

    from .tiny import QWEN_VISION_TOKENS, build_tokenizer, qwen_chat_template, save_qwen_video_processor

    tokenizer = build_tokenizer(qwen=True)
    names = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")
    for attr, token in zip(names, QWEN_VISION_TOKENS):
        setattr(config, attr, tokenizer.convert_tokens_to_ids(token))
    Qwen2VLImageProcessorPil(patch_size=config.vision_config.patch_size).save_pretrained(path)
    tokenizer.save_pretrained(path)
    system = "You are a helpful assistant." if config.model_type == "qwen2_5_vl" else None
    (path / "chat_template.jinja").write_text(qwen_chat_template(system))
    # the family's real video processor (its class's sizes), for --video-frames
    save_qwen_video_processor(path, "2.5" if config.model_type == "qwen2_5_vl" else "3",
                              patch=config.vision_config.patch_size)
    return tokenizer


def _llava_processor(config: Any, path: Path) -> Any:
    from transformers import CLIPImageProcessorPil, LlavaNextImageProcessorPil, LlavaNextProcessor, LlavaProcessor

    from .tiny import CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer()
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = config.vision_config
    common = {
        "size": {"shortest_edge": vision.image_size},
        "crop_size": {"height": vision.image_size, "width": vision.image_size},
    }
    processor_args = {
        "tokenizer": tokenizer, "patch_size": vision.patch_size, "chat_template": CHAT_TEMPLATE,
        "vision_feature_select_strategy": config.vision_feature_select_strategy, "num_additional_image_tokens": 1,
    }
    if config.model_type == "llava_next":
        image_processor = LlavaNextImageProcessorPil(**common, image_grid_pinpoints=config.image_grid_pinpoints)
        LlavaNextProcessor(image_processor=image_processor, **processor_args).save_pretrained(path)
    else:
        LlavaProcessor(image_processor=CLIPImageProcessorPil(**common), **processor_args).save_pretrained(path)
    return tokenizer


def _gemma3_processor(config: Any, path: Path) -> Any:
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    from .tiny import GEMMA3_CHAT_TEMPLATE, GEMMA3_IMAGE_TOKENS, build_tokenizer

    tokenizer = build_tokenizer(gemma=True)
    for name, token in GEMMA3_IMAGE_TOKENS.items():  # boi_token -> config.boi_token_id, ...
        setattr(config, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    side = config.vision_config.image_size
    image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side}, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3)
    Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.mm_tokens_per_image,
                    chat_template=GEMMA3_CHAT_TEMPLATE).save_pretrained(path)
    return tokenizer


def _internvl_processor(config: Any, path: Path) -> Any:
    from .tiny import INTERNVL_TOKENS, build_tokenizer, save_internvl_processor

    tokenizer = build_tokenizer(qwen=True, extra_specials=INTERNVL_TOKENS)
    config.image_token_id = tokenizer.context_image_token_id
    save_internvl_processor(path, tokenizer, tile=config.vision_config.image_size[0],
                            per_tile=config.image_seq_length)
    return tokenizer


def _onevision_processor(config: Any, path: Path) -> Any:
    from transformers import LlavaOnevisionImageProcessorPil

    from .tiny import ONEVISION_PLACEHOLDERS, build_tokenizer, save_onevision_processor

    tokenizer = build_tokenizer(qwen=True, extra_specials=ONEVISION_PLACEHOLDERS)
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    side = config.vision_config.image_size
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side}, image_grid_pinpoints=config.image_grid_pinpoints
    )
    save_onevision_processor(path, image_processor, tokenizer, config)
    return tokenizer


ARCH_PROCESSORS: dict[str, Callable[[Any, Path], Any]] = {
    "llava": _llava_processor,
    "llava_next": _llava_processor,
    "qwen2_5_vl": _qwen_vl_processor,
    "qwen3_vl": _qwen_vl_processor,
    "qwen3_5": _qwen_vl_processor,
    "gemma3": _gemma3_processor,
    "internvl": _internvl_processor,
    "llava_onevision": _onevision_processor,
}
"""Per `model_type`: writes the family's real image processor at the real resolution, with the offline
tokenizer from `tiny.py`, to a folder; points the config's special-token ids at that tokenizer; returns it."""


def write_arch_folder(name: str, path: str | Path) -> Path:
    """Write the config and processor of architecture `name` (no weights) to `path`, for
    `Engine(path, random_weights=True)`.

    The processor is the family's real image processor at the real resolution (CLIP 336 px for
    LLaVA: 576 tokens) with the offline tokenizer from `tiny.py`; the config's special-token ids
    are pointed at that tokenizer (`ARCH_PROCESSORS`). Vocabulary and all widths stay those of the real model.
    """
    from transformers import GenerationConfig

    if name not in ARCHS:
        raise UsageError(f"unknown --arch '{name}'; known: {', '.join(ARCHS)}")
    path = Path(path)
    config = build_config(name)
    tokenizer = ARCH_PROCESSORS[config.model_type](config, path)
    config.save_pretrained(path)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(path)
    return path


def load_arch(name: str, *, device: str = "auto", dtype: str = "auto", pan_and_scan: bool | None = None) -> Engine:
    """An engine on architecture `name` with random weights (see `write_arch_folder`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"mmtok-{name}-") as folder:
        engine = Engine(str(write_arch_folder(name, folder)), device=device, dtype=dtype, random_weights=True,
                        pan_and_scan=pan_and_scan)
    engine.model_name = name
    return engine


@dataclass
class _Config:
    tokens: Budget
    batch_size: int
    runs: list[dict[str, float]] = field(default_factory=list)
    peak_bytes: int = 0
    vision: tuple[int, int] = (0, 0)
    prompt: tuple[int, int] = (0, 0)
    error: str | None = None


def _median_spread(values: list[float]) -> tuple[float, list[float]]:
    return round(statistics.median(values), 3), [round(min(values), 3), round(max(values), 3)]


def _measure_once(
    engine: Engine, cfg: _Config, image: Any, question: str, new_tokens: int, method: str = "mmtok",
    **conventions: str,
) -> dict[str, float]:
    n = cfg.batch_size
    method = "full" if cfg.tokens == "full" else method
    tokens = 1 if cfg.tokens == "full" else int(cfg.tokens)  # the budget is unused by method "full"
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    start = engine._sync()  # the engine's clock: waits for the GPU, like its stage timings
    answers = engine.run([image] * n, [question] * n, tokens=tokens, method=method,
                         max_new_tokens=new_tokens, ignore_eos=True, **conventions)
    wall_ms = (engine._sync() - start) * 1e3
    if cuda:
        cfg.peak_bytes = max(cfg.peak_bytes, torch.cuda.max_memory_allocated(engine.device))
    made = {len(a.output_ids) for a in answers}
    if made != {new_tokens}:  # the speedup would compare different amounts of work
        raise RuntimeError(f"asked for exactly {new_tokens} new tokens, generated {sorted(made)}")
    first = answers[0]
    cfg.vision = (first.vision_kept, first.vision_total)
    cfg.prompt = (first.prompt_pruned, first.prompt_unpruned)
    t = first.timings_ms
    return {
        "preprocess": t["preprocess"], "vision": t["vision"], "select": t["select"], "prefill": t["prefill"],
        "decode": t["decode"], "end_to_end": wall_ms / n,
    }


def profile(
    engine: Engine,
    *,
    budgets: Sequence[Budget] = ("full", 64),
    batch_sizes: Sequence[int] = (1,),
    new_tokens: int = 1,
    warmup: int = 1,
    repeats: int = 3,
    image: Image.Image | None = None,
    question: str = DEFAULT_QUESTION,
    progress: Callable[[str], None] | None = None,
    method: str = "mmtok",
    budget: str = "total",
    question_words: str = "content",
    video_frames: int | None = None,
) -> dict[str, Any]:
    """Measure every configuration and return the report (the `--json` document, see the module doc).

    `method` selects the tokens of every budget but 'full' (MMTok or a baseline); `budget` and `question_words`
    as in `Engine.run_prepared` (the report's `selection`). `video_frames`: ask about a generated clip of that many
    frames (`default_video`) instead of the image (families with videos; decoding a file is not part of it)."""
    if new_tokens < 1 or repeats < 1 or warmup < 0:
        raise UsageError("need --new-tokens >= 1, --repeats >= 1 and --warmup >= 0")
    budgets = list(budgets) if "full" in budgets else ["full", *budgets]
    image = image or default_image()
    visual: Any = image
    if video_frames is not None:
        if video_frames < 1:
            raise UsageError(f"--video-frames must be at least 1 (got {video_frames})")
        if not engine.adapter.videos:
            raise UsageError(f"--video-frames: {engine.adapter.family} checkpoints take no videos")
        visual = default_video(video_frames)
    configs = [_Config(b, n) for n in batch_sizes for b in budgets]
    rounds = warmup + repeats
    # Every round shows the same image, batch mates too: the profile measures what a new image costs, uncached.
    cache, engine.cache = engine.cache, None
    try:
        _measure_all(engine, configs, rounds, warmup, repeats, visual, question, new_tokens, method, progress,
                     budget=budget, question_words=question_words)
    finally:
        engine.cache = cache
    report = _report(engine, configs, new_tokens=new_tokens, warmup=warmup, repeats=repeats,
                     image=image if video_frames is None else Image.new("RGB", (VIDEO_SIZE, VIDEO_SIZE)),
                     question=question, method=method)
    report["selection"] = {"budget": budget, "question_words": question_words}
    if video_frames is not None:
        report["video_frames"] = video_frames
    return report


def _measure_all(
    engine: Engine, configs: list[_Config], rounds: int, warmup: int, repeats: int, image: Any, question: str,
    new_tokens: int, method: str, progress: Callable[[str], None] | None, **conventions: str,
) -> None:
    for r in range(rounds):
        for i, cfg in enumerate(configs):
            if cfg.error:
                continue
            if progress:
                what = "warm-up" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
                progress(f"{what} · tokens {cfg.tokens} · batch {cfg.batch_size} ({i + 1}/{len(configs)})")
            try:
                run = _measure_once(engine, cfg, image, question, new_tokens, method, **conventions)
            except torch.cuda.OutOfMemoryError:
                cfg.error = "out of memory"
                torch.cuda.empty_cache()
                continue
            if r >= warmup:
                cfg.runs.append(run)


def _report(
    engine: Engine, configs: list[_Config], *, new_tokens: int, warmup: int, repeats: int, image: Image.Image,
    question: str, method: str = "mmtok",
) -> dict[str, Any]:
    import transformers

    from . import __version__

    full = {c.batch_size: statistics.median(r["end_to_end"] for r in c.runs)
            for c in configs if c.tokens == "full" and c.runs}
    results = []
    for cfg in configs:
        row: dict[str, Any] = {"tokens": cfg.tokens, "batch_size": cfg.batch_size}
        if not cfg.runs:
            results.append({**row, "error": cfg.error or "no runs"})
            continue
        # Decode per token: generation after the first token, over the N - 1 tokens it produced.
        per_token = [r["decode"] / (new_tokens - 1) for r in cfg.runs] if new_tokens > 1 else None
        stages, spreads = {}, {}
        for stage in STAGES:
            values = per_token if stage == "decode_per_token" else [r[stage] for r in cfg.runs]
            stages[stage], spreads[stage] = _median_spread(values) if values else (None, None)
        e2e, e2e_spread = _median_spread([r["end_to_end"] for r in cfg.runs])
        base = full.get(cfg.batch_size)
        results.append({
            **row,
            "stages_ms": stages,
            "stages_ms_spread": spreads,
            "end_to_end_ms": e2e,
            "end_to_end_ms_spread": e2e_spread,
            "items_per_s": round(1e3 / e2e, 3),
            "peak_memory_mb": round(cfg.peak_bytes / 2**20, 1) if engine.device.type == "cuda" else None,
            # Ratio of the unrounded medians, both from this run.
            "speedup": round(base / statistics.median(r["end_to_end"] for r in cfg.runs), 3) if base else None,
            "vision_tokens": {"kept": cfg.vision[0], "total": cfg.vision[1]},
            "prompt_tokens": {"pruned": cfg.prompt[0], "unpruned": cfg.prompt[1]},
            "runs": len(cfg.runs),
            **({"error": cfg.error} if cfg.error else {}),
        })
    device = engine.device
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "model": engine.model_name,
        "family": engine.adapter.family,
        "pan_and_scan": engine.pan_and_scan,
        "random_weights": engine.random_weights,
        "method": method,
        "versions": {"mmtok": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "new_tokens": new_tokens,
        "warmup": warmup,
        "repeats": repeats,
        "question": question,
        "image_size": [image.width, image.height],
        "times": "ms per item (the item's share of its batch); medians over repeats, spreads are [min, max]",
        "peak_memory": "torch.cuda.max_memory_allocated; null on CPU, where it is not tracked",
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Speedup per budget (one line per batch size) and the per-item time breakdown per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "end_to_end_ms" in r]
    sizes = sorted({r["batch_size"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for n in sizes:
        mine = [r for r in rows if r["batch_size"] == n]
        left.plot([str(r["tokens"]) for r in mine], [r["speedup"] for r in mine], marker="o", label=f"batch {n}")
    left.set(xlabel="vision tokens", ylabel="end-to-end speedup vs full", title="Speedup (measured)")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.legend()
    mine = [r for r in rows if r["batch_size"] == sizes[0]]
    labels = [str(r["tokens"]) for r in mine]
    bottom = [0.0] * len(mine)
    new_tokens = report.get("new_tokens", 1)
    for stage in ("preprocess", "vision", "select", "prefill", "decode"):
        if stage == "decode":
            values = [(r["stages_ms"]["decode_per_token"] or 0.0) * (new_tokens - 1) for r in mine]
        else:
            values = [r["stages_ms"][stage] for r in mine]
        right.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    right.set(xlabel="vision tokens", ylabel="ms per item", title=f"Time per item, batch {sizes[0]}")
    right.legend()
    fig.suptitle(f"{report['model']} · {report['device_name']} · {report['dtype']} · {new_tokens} new token(s)")
    fig.tight_layout()
    from .io import writing

    with writing(path, "--plot"):
        fig.savefig(path, dpi=120)
    plt.close(fig)

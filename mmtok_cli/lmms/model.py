"""The lmms-eval model class behind `--model mmtok`: one loaded `Engine`, requests answered by `mmtok batch`'s runner.

Imported by lmms-eval only when a run selects `mmtok` (see `__init__.py`); it needs lmms-eval installed.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from tqdm import tqdm

from ..batch import BatchOptions, BatchRunner
from ..engine import Engine
from ..errors import MmtokError, UsageError
from ..io import Item
from ..options import DEFAULT_MODEL, check_agent, check_options, check_post_prompt, selection_params
from ..video import MAX_FRAMES, FrameSampling

IMAGE_TAG = "<image>"
"""Some tasks write LLaVA's image placeholder into the prompt; the adapter places the image itself."""


class Mmtok(lmms):
    """`--model_args pretrained=HUB_ID|FOLDER|demo,tokens=64,method=mmtok[,alpha=,tau_t=,tau_v=,device=,dtype=,agent=,
    post_prompt=,pan_and_scan=,frames=,fps=,max_frames=]`.

    Generation follows each task's `max_new_tokens` and `until`; decoding is always greedy (mmtok's).
    `post_prompt`: appended to every request's text on a line of its own, after the task's own post-prompt (as
    `mmtok eval --post-prompt`). `pan_and_scan`: Gemma 3's crops of long images (`--pan-and-scan`). A request may
    hand over several visuals (PIL images and paths of images or videos, as `videomme` and `mvbench` do): they are
    the item's inputs in order, `tokens` the total for them; videos' frames by `frames` / `fps` / `max_frames` (else
    the family's own rule), decoded in the background like `mmtok batch`'s.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str = DEFAULT_MODEL,
        tokens: int = 64,
        method: str = "mmtok",
        alpha: float | None = None,
        tau_t: float | None = None,
        tau_v: float | None = None,
        device: str = "auto",
        dtype: str = "auto",
        agent: bool = False,
        agent_tokens: int | None = None,
        batch_size: int | str = 8,
        max_batch_size: int | None = None,  # lmms-eval passes it for --batch_size auto, which mmtok does not use
        budget: str | None = None,
        question_words: str | None = None,
        post_prompt: str | None = None,
        pan_and_scan: bool | None = None,
        frames: int | None = None,
        fps: float | None = None,
        max_frames: int = MAX_FRAMES,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise UsageError(f"unknown model_args for mmtok: {', '.join(sorted(unknown))} (known: pretrained, tokens, "
                             "method, alpha, tau_t, tau_v, budget, question_words, post_prompt, pan_and_scan, device, "
                             "dtype, agent, agent_tokens, frames, fps, max_frames)")
        try:
            size = int(batch_size)
        except ValueError:
            raise UsageError(f"mmtok needs a number for --batch_size (got '{batch_size}'); it halves the batch "
                             "by itself when memory runs out") from None
        if size < 1:
            raise UsageError(f"--batch_size must be at least 1 (got {size})")
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise UsageError(f"model_args tokens must be an integer (got {tokens!r})")
        check_options(tokens=tokens, method=str(method), max_new_tokens=1, dtype=str(dtype), device=str(device))
        check_agent(agent=bool(agent), method=str(method), agent_tokens=agent_tokens)
        post_prompt = None if post_prompt is None else str(post_prompt)  # lmms-eval makes "1" a number
        check_post_prompt(post_prompt)
        if pan_and_scan is not None and not isinstance(pan_and_scan, bool):
            raise UsageError(f"model_args pan_and_scan must be true or false (got {pan_and_scan!r})")
        self.options = BatchOptions(
            tokens=tokens, method=str(method), batch_size=size, agent=bool(agent), agent_tokens=agent_tokens,
            selection=selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                       question_words=question_words),
            post_prompt=post_prompt,
            frame_sampling=FrameSampling(frames=None if frames is None else int(frames),
                                         fps=None if fps is None else float(fps), max_frames=int(max_frames)).check(),
        )
        self.engine = Engine(str(pretrained), device=str(device), dtype=str(dtype), pan_and_scan=pan_and_scan)
        self._device = self.engine.device

    @property
    def device(self) -> Any:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request, in request order; every request of the list goes through one batch run."""
        items, stops = [], []
        for number, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            where = f"{task}/{split}/{doc_id}"
            picture, sources = request_visuals(doc_to_visual(self.task_dict[task][split][doc_id]), where,
                                               sampling=self.options.frame_sampling,
                                               rule=self.engine.adapter.frame_rule())
            limit, until = generation_limits(gen_kwargs, self.options.max_new_tokens)
            question = context.replace(IMAGE_TAG, "").strip()
            items.append(Item(line=number + 1, id=number, image=where, question=question, max_new_tokens=limit,
                              picture=picture, sources=sources))
            stops.append(until)
        records: list[dict[str, Any]] = []
        with tqdm(total=len(items), disable=self.rank != 0, desc="mmtok answering") as bar:
            BatchRunner(self.engine, self.options).run(items, records.extend, lambda done, _: bar.update(done))
        failed = [r for r in records if r["error"] is not None]
        if failed and len(failed) == len(records):
            raise MmtokError(f"every request failed; the first: {failed[0]['error']}")
        for r in failed:  # scored as wrong, the way `mmtok eval` counts a failed item
            logger.warning(f"mmtok: {r['image']} failed, answered with an empty string: {r['error']}")
        answers = [cut(r["answer"] or "", until) for r, until in zip(records, stops)]
        for request, answer in zip(requests, answers):
            self.cache_hook.add_partial("generate_until", request.args[:2], answer)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("mmtok only generates answers (generate_until): tasks scored by loglikelihood "
                                  "cannot run on it")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("mmtok answers one question per item in one round: multi-round tasks cannot "
                                  "run on it")


def request_visuals(
    visuals: Any, where: str, *, sampling: FrameSampling | None = None, rule: Any = None
) -> tuple[Any, list[tuple[str, str]]]:
    """A request's visuals as an item's: (picture, sources). PIL images become the picture (RGB, as `mmtok` opens
    files: one alone, several as a list); file paths (videos by their suffix, as lmms-eval's video tasks hand them
    over, or images) become `sources`, opened by the batch runner in the background. Videos in a mix with PIL images
    are decoded here (`sampling`, `rule`: see `video.decode`). A one-line error for no visual, or one of another
    kind."""
    from ..io import open_visuals
    from ..video import looks_like_video

    found = [] if visuals is None else list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    if not found:
        raise MmtokError(f"{where}: this request has no visual; mmtok answers questions about images and videos")
    odd = [type(v).__name__ for v in found if not isinstance(v, (Image.Image, str))]
    if odd:
        raise MmtokError(f"{where}: mmtok takes PIL images and paths of images or videos, this request has "
                         f"{', '.join(odd)}")
    sources = [("video" if looks_like_video(v) else "image", v) for v in found if isinstance(v, str)]
    if len(sources) == len(found):
        return None, sources
    if not sources:
        pictures = [v.convert("RGB") for v in found]
        return (pictures[0] if len(pictures) == 1 else pictures), []
    opened = [v.convert("RGB") if isinstance(v, Image.Image) else open_visuals([source], sampling=sampling, rule=rule)
              for v, source in zip(found, _aligned(found, sources))]
    return opened, []


def _aligned(found: list[Any], sources: list[tuple[str, str]]) -> list[Any]:
    """`sources` spread over `found`'s positions (None where `found` holds a PIL image)."""
    left = iter(sources)
    return [next(left) if isinstance(v, str) else None for v in found]


_warned: set[str] = set()


def generation_limits(gen_kwargs: dict[str, Any], default: int) -> tuple[int, list[str]]:
    """The task's `max_new_tokens` (else `default`) and its `until` stop strings; sampling settings are ignored
    (mmtok decodes greedily), with one warning per setting."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    sampling = {k: gen_kwargs.get(k) for k in ("do_sample", "temperature", "num_beams")}
    if sampling["do_sample"] or (sampling["temperature"] or 0) > 0 or (sampling["num_beams"] or 1) > 1:
        key = repr(sorted(sampling.items()))
        if key not in _warned:
            _warned.add(key)
            logger.warning(f"mmtok decodes greedily; the task's {sampling} are ignored")
    limit = gen_kwargs.get("max_new_tokens") or default
    return int(limit), until


def cut(text: str, until: list[str]) -> str:
    """The answer up to the first of the task's stop strings (the end-of-sequence token already ended it)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text

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

IMAGE_TAG = "<image>"
"""Some tasks write LLaVA's image placeholder into the prompt; the adapter places the image itself."""


class Mmtok(lmms):
    """`--model_args pretrained=HUB_ID|FOLDER|demo,tokens=64,method=mmtok[,alpha=,tau_t=,tau_v=,device=,dtype=,agent=]`.

    Generation follows each task's `max_new_tokens` and `until`; decoding is always greedy (mmtok's).
    `post_prompt`: appended to every request's text on a line of its own, after the task's own post-prompt (as
    `mmtok eval --post-prompt`). `pan_and_scan`: Gemma 3's crops of long images (`--pan-and-scan`).
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
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise UsageError(f"unknown model_args for mmtok: {', '.join(sorted(unknown))} (known: pretrained, tokens, "
                             "method, alpha, tau_t, tau_v, budget, question_words, post_prompt, pan_and_scan, device, "
                             "dtype, agent, agent_tokens)")
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
            picture = one_image(doc_to_visual(self.task_dict[task][split][doc_id]), where)
            limit, until = generation_limits(gen_kwargs, self.options.max_new_tokens)
            question = context.replace(IMAGE_TAG, "").strip()
            items.append(Item(line=number + 1, id=number, image=where, question=question, max_new_tokens=limit,
                              picture=picture))
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
        raise NotImplementedError("mmtok answers one question per image in one round: multi-round tasks cannot "
                                  "run on it")


def one_image(visuals: Any, where: str) -> Image.Image:
    """The request's single image as RGB (as `mmtok` opens files), or a one-line error for none or several."""
    found = [] if visuals is None else list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    if len(found) != 1 or not isinstance(found[0], Image.Image):
        what = ", ".join(type(v).__name__ for v in found) or "nothing"
        raise MmtokError(f"{where}: mmtok answers about exactly one image per question, this request has "
                         f"{len(found)} visual(s) ({what}); pick an image task with one image per question")
    return found[0].convert("RGB")


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

"""Question -> content words -> token ids: the text side T of MMTok (DESIGN.md §2)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

STOP_WORDS = frozenset(
    """a an the is are was were be been being have has had do does did it they he she we you i
    what where when why how who which and or but so if then question answer to for with by from
    at into onto upon""".split()
)

# Fixed answer-format instructions that benchmarks append to questions: they say nothing about
# the image, so they must not steer which tokens are kept.
ANSWER_FORMAT_INSTRUCTIONS = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits


def content_words(
    question: str,
    *,
    image_token: str | None = "<image>",
    instructions: Iterable[str] = ANSWER_FORMAT_INSTRUCTIONS,
) -> list[str]:
    """The question's content words: no image placeholder, no answer-format instruction,
    punctuation dropped, stop words removed (all words if none survive)."""
    text = question
    if image_token:
        text = text.replace(image_token, " ")
    for phrase in instructions:
        text = re.sub(re.escape(phrase), " ", text, flags=re.IGNORECASE)
    words = _WORD.findall(text)
    content = [w for w in words if w.lower() not in STOP_WORDS]
    return content or words


def all_words(question: str, *, image_token: str | None = "<image>") -> list[str]:
    """Every word of `"Question: " + question`, split on whitespace: no stop-word filter, punctuation kept.

    The MMTok authors' Qwen rule (Ironieser/MMTok at d1522cd, mmtok_core.py: `f"Question: {question_text}"`,
    then `text.split()` into the tokenizer). The image placeholder, which their question text never contains,
    is removed first.
    """
    text = question.replace(image_token, " ") if image_token else question
    return ("Question: " + text).split()


def with_post_prompt(question: str, post_prompt: str | None) -> str:
    """The text the model is asked: the question, then the post-prompt on a line of its own (as lmms-eval's tasks
    append theirs, e.g. pope's "\nAnswer the question using a single word or phrase.")."""
    return f"{question}\n{post_prompt}" if post_prompt else question


def question_words(
    question: str, mode: str = "content", *, image_token: str | None = "<image>", post_prompt: str | None = None
) -> list[str]:
    """The question's words that make T: `content_words` ("content") or `all_words` ("all").

    `post_prompt`: the fixed instruction the model reads after the question (`with_post_prompt`). Like any
    answer-format instruction it is not part of "content" (it is the same for every question, so says nothing
    about the image); "all" takes every word the model reads, so it is there, as it is in an lmms-eval task's
    prompt.
    """
    if mode == "all":
        return all_words(with_post_prompt(question, post_prompt), image_token=image_token)
    return content_words(question, image_token=image_token)


def answer_words(answer: str) -> list[str]:
    """The content words of a preliminary answer (the agent's): punctuation and stop words dropped.

    Unlike a question's, nothing falls back to all words: an answer of stop words only adds nothing to T.
    """
    return [w for w in _WORD.findall(answer) if w.lower() not in STOP_WORDS]


def content_token_ids(
    question: str, tokenizer: Any, *, image_token: str | None = "<image>", agent_answer: str | None = None,
    words: str = "content", post_prompt: str | None = None,
) -> list[int]:
    """Token ids of the question's words (`question_words` with mode `words` and `post_prompt`), each word
    tokenized on its own, without special tokens.

    `agent_answer`: a preliminary answer whose words (`answer_words`) follow the question's (the agent).
    """
    chosen = question_words(question, words, image_token=image_token, post_prompt=post_prompt)
    if agent_answer:
        chosen = chosen + answer_words(agent_answer)
    if not chosen:
        return []
    ids = tokenizer(chosen, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    return list(ids)

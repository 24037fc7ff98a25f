"""OpenAI's Chat Completions wire format: a request body validated into an `Item` plus what only a chat has, and
the `chat.completion` / `chat.completion.chunk` bodies built from an engine `Answer`.

No FastAPI and no torch here: this is plain data in and out, so every rule is readable in one place. A request
and a JSONL line for `mmtok batch` mean the same thing: both become an `Item` (image, question, tokens,
max_new_tokens), checked by the same code (`io.positive_int`, `options.selection_params`, ...).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UsageError
from ..io import Item, answer_fields, positive_int
from ..options import AGENT_METHODS, METHODS, selection_params

if TYPE_CHECKING:
    from ..engine import Answer, Sampling
    from .options import ServeOptions

MAX_STOP = 4
"""OpenAI's limit on `stop` sequences."""
REQUEST_KEYS = {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options",
                "temperature", "top_p", "seed", "mmtok", "user"}
"""Top-level fields the server honours (`user` only names the caller, as for OpenAI)."""
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,), "presence_penalty": (0,), "frequency_penalty": (0,), "logprobs": (False,), "logit_bias": ({},),
    "response_format": ({"type": "text"},), "tools": ([],), "tool_choice": ("none",), "store": (False,),
    "parallel_tool_calls": (False, True), "metadata": ({},),
}
"""Options the server cannot honour, accepted only at values that change nothing; any other value is a 400."""
MMTOK_KEYS = ("tokens", "method", "budget", "question_words", "alpha", "tau_t", "tau_v", "agent", "agent_tokens")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""Message roles and what the chat template gets (`developer` is OpenAI's newer name for `system`)."""


class ApiError(Exception):
    """A request that gets an OpenAI-shaped error instead of an answer."""

    TYPES: ClassVar[dict[int, str]] = {500: "server_error", 503: "server_error"}
    """OpenAI's error types by status; every other status is an "invalid_request_error"."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class RunOptions:
    """What one forward pass does for all its rows (`Engine.run_prepared`'s batch-wide keywords): requests that
    differ here cannot share a pass."""

    method: str
    selection: tuple[tuple[str, float | str], ...] = ()
    """alpha / tau_t / tau_v / budget / question_words that are set, sorted by name."""
    agent: bool = False
    agent_tokens: int | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"method": self.method, **dict(self.selection), "agent": self.agent, "agent_tokens": self.agent_tokens}


@dataclass
class ChatRequest:
    """A validated chat request: the item it asks, and what only a chat has."""

    item: Item
    url: str
    """The image as sent: a data:, http(s): or file: URL."""
    url_param: str
    """Where the image sits in the request (`messages[0].content[1].image_url.url`), for errors about it."""
    conversation: list[dict[str, Any]] | None
    """Chat-template messages (the image as `{"type": "image"}`), or None for one user turn of the image, then the
    question: exactly `mmtok ask`'s prompt."""
    run: RunOptions
    sampling: Sampling
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))


def parse_chat(body: Any, options: ServeOptions, *, model_name: str, has_template: bool) -> ChatRequest:
    """A chat completion request body -> ChatRequest, or the ApiError (400, 404) that says what is wrong with it.

    `model_name` is the model the server answers as; `has_template`: whether the checkpoint has a chat template
    (without one, only a single user turn of the image, then the question, can be prompted)."""
    from ..engine import Sampling

    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    given = {k: v for k, v in body.items() if v is not None}  # OpenAI treats null as not given
    for key, value in given.items():
        if key in REQUEST_KEYS:
            continue
        if key in NO_OP_VALUES:
            if not any(value == ok and type(value) is type(ok) for ok in NO_OP_VALUES[key]):
                shown = "n > 1" if key == "n" else f"'{key}'"
                raise bad(f"{shown} is not supported by mmtok serve (accepted only as {NO_OP_VALUES[key][0]!r})",
                          key, "unsupported_parameter")
            continue
        raise bad(f"'{key}' is not supported by mmtok serve", key, "unsupported_parameter")
    model = given.get("model")
    if not isinstance(model, str):
        raise bad("'model' is required: the served model's id (GET /v1/models)", "model")
    if model != model_name:
        raise ApiError(404, f"the model '{model}' is not served here; this server serves '{model_name}'",
                       param="model", code="model_not_found")
    messages, question, url, url_param = _messages(given.get("messages"), options)
    max_tokens = _max_tokens(given, options)
    mm = _mmtok(given.get("mmtok", {}), options)
    stop = _stop(given.get("stop"))
    stream = given.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    include_usage = _stream_options(given.get("stream_options"), stream)
    sampling = Sampling(temperature=_number(given, "temperature", 0, 2, low_open=False),
                        top_p=_number(given, "top_p", 0, 1, low_open=True), seed=_seed(given.get("seed")))
    simple = (len(messages) == 1 and [p["type"] for p in messages[0]["content"]] == ["image", "text"])
    if not simple and not has_template:
        raise bad("this checkpoint has no chat template, so it reads one user message only: the image, then the "
                  "question", "messages")
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    item = Item(line=1, id=request_id, image=_label(url), question=question, tokens=mm.pop("tokens"),
                max_new_tokens=max_tokens)
    return ChatRequest(item=item, url=url, url_param=url_param, conversation=None if simple else messages,
                       run=RunOptions(**mm), sampling=sampling, stop=stop, stream=stream, include_usage=include_usage,
                       id=request_id)


def _messages(value: Any, options: ServeOptions) -> tuple[list[dict[str, Any]], str, str, str]:
    """Chat-template messages, the question (the last user message's text), the image's URL and its place."""
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty list of messages", "messages")
    out: list[dict[str, Any]] = []
    images: list[tuple[str, str]] = []
    chars = 0
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object with 'role' and 'content'", where)
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise bad(f"{where}.{extra[0]} is not supported by mmtok serve", f"{where}.{extra[0]}",
                      "unsupported_parameter")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})", f"{where}.role")
        parts = _parts(message.get("content"), where, role, images)
        chars += sum(len(p.get("text", "")) for p in parts)
        out.append({"role": ROLES[role], "content": parts})
    if chars > options.max_prompt_chars:
        raise bad(f"the messages hold {chars} characters of text, over this server's limit of "
                  f"{options.max_prompt_chars} (--max-prompt-chars)", "messages", "too_long")
    if len(images) != 1:
        raise bad(f"mmtok serve answers about exactly one image per request; the messages hold {len(images)}",
                  "messages", "image_count")
    if out[-1]["role"] != "user":
        raise bad("the last message must be the user's: its text is the question", f"messages[{len(out) - 1}]")
    question = "\n".join(p["text"] for p in out[-1]["content"] if p["type"] == "text")
    if not question.strip():
        raise bad("the last user message has no text: it is the question", f"messages[{len(out) - 1}].content")
    url, url_param = images[0]
    return out, question, url, url_param


def _parts(content: Any, where: str, role: str, images: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A message's content as chat-template parts; images are collected with their place in the request."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or a list of parts", f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if set(part) != {"type", "text"} or not isinstance(part["text"], str):
                raise bad(f"{at} must be {{\"type\": \"text\", \"text\": \"...\"}}", at)
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            if set(part) != {"type", "image_url"} or not isinstance(image, dict) or not isinstance(
                    image.get("url"), str):
                raise bad(f"{at} must be {{\"type\": \"image_url\", \"image_url\": {{\"url\": \"...\"}}}}", at)
            if role != "user":
                raise bad(f"{at}: images go in user messages", at)
            odd = sorted(set(image) - {"url", "detail"}) or (["detail"] if image.get("detail", "auto") != "auto" else [])
            if odd:
                key = odd[0]
                raise bad(f"{at}.image_url.{key} is not supported by mmtok serve (the checkpoint's processor decides "
                          "the resolution; --tokens the vision tokens)", f"{at}.image_url.{key}",
                          "unsupported_parameter")
            _check_url(image["url"], f"{at}.image_url.url")
            images.append((image["url"], f"{at}.image_url.url"))
            parts.append({"type": "image"})
        else:
            raise bad(f"{at}: content parts of type {kind!r} are not supported (text and image_url are)", at,
                      "unsupported_parameter")
    return parts


def _check_url(url: str, param: str) -> None:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        if not re.match(r"data:image/[\w.+-]+;base64,", url, re.IGNORECASE):
            raise bad("a data URL image must be data:image/<type>;base64,<data>", param)
    elif scheme not in ("http", "https", "file"):
        raise bad(f"image URLs must be data:image/...;base64, http(s) or file URLs (got {scheme or 'no'} scheme)",
                  param)


def _label(url: str) -> str:
    """The image's name in the item: its URL, a data URL cut short."""
    return url if not url.startswith("data:") else url[: url.index(",") + 1] + "..."


def _max_tokens(given: dict[str, Any], options: ServeOptions) -> int:
    values = {k: given[k] for k in ("max_completion_tokens", "max_tokens") if k in given}
    if len(set(map(repr, values.values()))) > 1:
        raise bad("'max_tokens' and 'max_completion_tokens' differ; give one", "max_tokens")
    if not values:
        return options.max_new_tokens
    key, value = next(iter(values.items()))
    try:
        value = positive_int(value, key)
    except ValueError as exc:
        raise bad(str(exc), key) from None
    if value > options.max_request_tokens:
        raise bad(f"'{key}' is {value}, over this server's limit of {options.max_request_tokens} "
                  "(--max-request-tokens)", key, "too_large")
    return value


SELECTION_KEYS = ("alpha", "tau_t", "tau_v", "budget", "question_words")


def _mmtok(value: Any, options: ServeOptions) -> dict[str, Any]:
    """The request's `mmtok` object over the server's defaults: tokens, and RunOptions' fields."""
    if not isinstance(value, dict):
        raise bad("'mmtok' must be an object, e.g. {\"tokens\": 32}", "mmtok")
    unknown = sorted(set(value) - set(MMTOK_KEYS))
    if unknown:
        raise bad(f"mmtok.{unknown[0]} is not an mmtok option (known: {', '.join(MMTOK_KEYS)})",
                  f"mmtok.{unknown[0]}", "unsupported_parameter")
    given = {k: v for k, v in value.items() if v is not None}
    for key in ("tokens", "agent_tokens"):
        if key in given:
            try:
                positive_int(given[key], f"mmtok.{key}")
            except ValueError as exc:
                raise bad(str(exc), f"mmtok.{key}") from None
    for key in ("method", "budget", "question_words"):
        if key in given and not isinstance(given[key], str):
            raise bad(f"mmtok.{key} must be a string", f"mmtok.{key}")
    for key in ("alpha", "tau_t", "tau_v"):
        if key in given and (isinstance(given[key], bool) or not isinstance(given[key], (int, float))):
            raise bad(f"mmtok.{key} must be a number", f"mmtok.{key}")
    if "agent" in given and not isinstance(given["agent"], bool):
        raise bad("mmtok.agent must be true or false", "mmtok.agent")
    method = given.get("method", options.method)
    if method not in METHODS:
        raise bad(f"unknown mmtok.method '{method}'; choose one of {', '.join(METHODS)}", "mmtok.method")
    selection = dict(options.selection)
    for key in SELECTION_KEYS:
        if key in given:
            try:
                selection.update(selection_params(**{"alpha": None, "tau_t": None, "tau_v": None, key: given[key]}))
            except UsageError as exc:
                raise bad(_field_names(str(exc)), f"mmtok.{key}") from None
    # The server's --agent applies where it can; asked for explicitly, it must be able to.
    agent = given.get("agent", options.agent and method in AGENT_METHODS)
    if agent and method not in AGENT_METHODS:
        raise bad(f"mmtok.agent changes only the methods that read the question ({', '.join(AGENT_METHODS)}); "
                  f"mmtok.method is {method}", "mmtok.agent")
    if "agent_tokens" in given and not agent:
        raise bad("mmtok.agent_tokens goes with mmtok.agent: true", "mmtok.agent_tokens")
    return {"tokens": given.get("tokens", options.tokens), "method": method,
            "selection": tuple(sorted(selection.items())), "agent": agent,
            "agent_tokens": given.get("agent_tokens", options.agent_tokens) if agent else None}


def _field_names(message: str) -> str:
    """A command-line check's message about the request's fields: `--tau-t` -> `mmtok.tau_t`."""
    return re.sub(r"--([a-z-]+)", lambda m: "mmtok." + m.group(1).replace("-", "_"), message)


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"'stop' takes at most {MAX_STOP} sequences (got {len(stops)})", "stop")
    return tuple(stops)


def _stream_options(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise bad("'stream_options' goes with stream: true", "stream_options")
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        extra = sorted(set(value) - {"include_usage"}) if isinstance(value, dict) else []
        raise bad(f"stream_options.{extra[0]} is not supported by mmtok serve" if extra else
                  "'stream_options' must be an object such as {\"include_usage\": true}",
                  f"stream_options.{extra[0]}" if extra else "stream_options")
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad("stream_options.include_usage must be true or false", "stream_options.include_usage")
    return include


def _number(given: dict[str, Any], key: str, low: float, high: float, *, low_open: bool) -> float | None:
    if key not in given:
        return None
    value = given[key]
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        span = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise bad(f"'{key}' must be a number {span} (got {value!r})", key)
    return float(value)


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise bad(f"'seed' must be a 64-bit integer (got {value!r})", "seed")
    return value


# -- responses -----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a served request's row produced: the engine's Answer, and the reply's text as the stop rules cut it."""

    answer: Answer
    text: str
    finish_reason: str
    """"stop" (end of sequence or a stop string) or "length" (max_tokens reached)."""
    completion_tokens: int
    batch_size: int
    """How many requests shared the forward pass that served this one."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Besides the answer's: `load` (the image's download and decoding) and `queue` (waiting for a pass)."""
    engine_fields: dict[str, Any] = field(default_factory=dict)
    """What `mmtok ask --json` says about the engine besides the answer: `pan_and_scan` for a family that crops."""


def usage(outcome: Outcome) -> dict[str, Any]:
    prompt = outcome.answer.prompt_pruned
    return {"prompt_tokens": prompt, "completion_tokens": outcome.completion_tokens,
            "total_tokens": prompt + outcome.completion_tokens,
            "prompt_tokens_details": {"image_tokens": outcome.answer.vision_kept}}


def mmtok_object(outcome: Outcome, method: str) -> dict[str, Any]:
    """The `mmtok` object of a reply: `mmtok ask --json`'s fields for this answer, and the pass's batch size."""
    fields = answer_fields(outcome.answer)
    fields.pop("answer")
    fields["timings_ms"] = {**fields["timings_ms"], **{k: round(v, 3) for k, v in outcome.timings_ms.items()}}
    return {**fields, "kept_indices": outcome.answer.kept_indices, "method": method, **outcome.engine_fields,
            "batch_size": outcome.batch_size}


def completion(request: ChatRequest, outcome: Outcome, model: str) -> dict[str, Any]:
    """A `chat.completion` body."""
    return {
        "id": request.id, "object": "chat.completion", "created": request.created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text},
                     "finish_reason": outcome.finish_reason, "logprobs": None}],
        "usage": usage(outcome), "mmtok": mmtok_object(outcome, request.run.method),
    }


def chunk(request: ChatRequest, model: str, *, delta: dict[str, Any] | None = None, finish_reason: str | None = None,
          outcome: Outcome | None = None, usage_only: bool = False) -> dict[str, Any]:
    """A `chat.completion.chunk` body: a delta; the last choice chunk (finish_reason, and the `mmtok` object); or,
    with stream_options.include_usage, the final usage chunk (no choices), as OpenAI sends them."""
    body: dict[str, Any] = {"id": request.id, "object": "chat.completion.chunk", "created": request.created,
                            "model": model}
    if usage_only:
        assert outcome is not None
        body["choices"] = []
        body["usage"] = usage(outcome)
        return body
    body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}]
    if request.include_usage:
        body["usage"] = None
    if outcome is not None:
        body["mmtok"] = mmtok_object(outcome, request.run.method)
    return body

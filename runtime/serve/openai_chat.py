"""The OpenAI chat-completions format, as VLM servers accept it: one user message with text and one `image_url`
part in, a `chat.completion` (or `chat.completion.chunk` events) out, with this server's `experts` and `timings_ms`
added. The reference models answer one question about one image: system messages are ignored (the package's
prompt has its own), and earlier turns are refused rather than silently dropped."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError

from ..request import Result
from .errors import RequestRefused, check_text


@dataclass
class ChatAsk:
    image_url: str
    question: str
    decoding: DecodingConfig
    stream: bool
    include_usage: bool
    model: str | None  # the model the client names (None: not named)


def refuse(message: str) -> RequestRefused:
    return RequestRefused(400, message)


def parse_chat(body: object, defaults: DecodingConfig) -> ChatAsk:
    """`defaults`: the package's generation settings."""
    if not isinstance(body, dict):
        raise refuse(f"expected a JSON object with 'messages', found {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise refuse("messages: expected a non-empty list of {role, content} objects")
    turns = [m for m in messages if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))]
    if len(turns) != 1 or not isinstance(turns[0], dict) or turns[0].get("role") != "user":
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in turns]
        raise refuse(f"messages: this model answers one question about one image, expected exactly one user message "
                     f"(system messages aside), found {roles}")
    question, image_url = read_content(turns[0].get("content"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise refuse(f"model: expected the name of a model (a string), found {model!r:.80}")
    return ChatAsk(image_url, question, decoding_of(body, defaults), stream_flag(body), include_usage(body), model)


def include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise refuse(f"stream_options: expected an object such as {{\"include_usage\": true}}, found {options!r:.80}")
    flag = options.get("include_usage", False)
    if not isinstance(flag, bool):
        raise refuse(f"stream_options.include_usage: expected true or false, found {flag!r:.80}")
    return flag


def read_content(content: object) -> tuple[str, str]:
    if isinstance(content, str):
        raise refuse("messages[user].content: no image; expected a list with a text part and one image_url part")
    if not isinstance(content, list):
        raise refuse(f"messages[user].content: expected a string or a list of parts, found {type(content).__name__}")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(url.get("url") if isinstance(url, dict) else url)
        else:
            raise refuse(f"messages[user].content: expected parts of type 'text' or 'image_url', found {part!r:.80}")
    if len(images) != 1:
        raise refuse(f"messages[user].content: expected exactly one image_url part, found {len(images)}")
    question = check_text("messages[user].content", "\n".join(t.strip() for t in texts if t.strip()))
    if not question:
        raise refuse("messages[user].content: no question; expected a text part beside the image")
    return question, images[0]


def stream_flag(body: dict) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise refuse(f"stream: expected true or false, found {stream!r}")
    return stream


def decoding_of(body: dict, defaults: DecodingConfig) -> DecodingConfig:
    """max_tokens (or max_completion_tokens), temperature (0: greedy, > 0: sampling; absent: the package's strategy),
    top_p and seed; n must be 1 and stop sequences are not supported."""
    if body.get("n", 1) != 1:
        raise refuse(f"n: only 1 answer per request is supported, found {body.get('n')!r}")
    if body.get("stop") not in (None, [], ""):
        raise refuse("stop: stop sequences are not supported; the model ends its answer itself")
    changes: dict = {}
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise refuse(f"max_tokens: expected an integer >= 1, found {tokens!r}")
        changes["max_new_tokens"] = tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise refuse(f"temperature: expected a number >= 0, found {temperature!r}")
        if temperature == 0:
            changes["strategy"] = "greedy"
        else:
            changes.update(strategy="sample", temperature=float(temperature))
    for name, kind, what in (("top_p", (int, float), "a number"), ("seed", int, "an integer")):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, kind):
                raise refuse(f"{name}: expected {what}, found {value!r}")
            changes[name] = float(value) if name == "top_p" else value
    cfg = defaults.replace(**changes) if changes else defaults
    try:
        cfg.validate()
    except InputError as exc:
        raise refuse(str(exc)) from exc
    return cfg


def finish_reason(result: Result, cfg: DecodingConfig) -> str:
    ended = bool(result.tokens) and result.tokens[-1] in cfg.eos_token_ids
    return "stop" if ended or len(result.tokens) < cfg.max_new_tokens else "length"


def usage(result: Result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": len(result.tokens),
            "total_tokens": result.prompt_tokens + len(result.tokens)}


def extras(result: Result, queue_ms: float) -> dict:
    """What this server adds to OpenAI's response: the experts' structured results and the per-stage timings."""
    return {"experts": {**result.experts, "verbalized": result.verbalized},
            "timings_ms": {**result.timings_ms, "queue": queue_ms}}


class Completion:
    """The ids and fields one answer's response (or its stream of chunks) shares."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, result: Result, cfg: DecodingConfig, queue_ms: float) -> dict:
        choice = {"index": 0, "message": {"role": "assistant", "content": result.answer},
                  "finish_reason": finish_reason(result, cfg)}
        return {**self.head("chat.completion"), "choices": [choice], "usage": usage(result), **extras(result, queue_ms)}

    def chunk(self, delta: dict, finish: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**self.head("chat.completion.chunk"), "choices": [choice]}

    def last_chunk(self, result: Result, cfg: DecodingConfig, queue_ms: float, include_usage: bool) -> dict:
        return {**self.chunk({}, finish_reason(result, cfg)), **extras(result, queue_ms),
                **({"usage": usage(result)} if include_usage else {})}

"""What a caller asks and what comes back: `Request` in, `Result` out, both plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from moai_edge.engines.decoding import DecodingConfig

from .contracts import AuxInputs

DEFAULT_QUESTION = "Describe this image in detail."


@dataclass
class Request:
    image: object  # a path, bytes, PIL image or HxWx3 uint8 array
    question: str
    decoding: DecodingConfig | None = None  # None: the package's generation defaults
    id: str | None = None
    template: str | None = None  # a prompt template of the package; None: its default
    aux: AuxInputs | None = None  # given: the experts are not run for this image and these inputs are used instead


@dataclass
class Result:
    id: str | None
    answer: str
    tokens: list[int]
    experts: dict  # the experts' structured results (segments, detections, relations, OCR lines)
    verbalized: str | None  # the family's display text: MoAI's verbalized experts, CoLLaVO's segment text
    timings_ms: dict[str, float]
    kv_cache_bytes: int = 0
    prompt_tokens: int = 0  # the prompt's length in positions, image features included
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # (stage, start, end) perf_counter seconds

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("spans")
        return d

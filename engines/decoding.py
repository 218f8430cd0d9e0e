"""How to decode: one `DecodingConfig`, which is also the manifest's generation defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from numbers import Integral, Real

from .errors import InputError

STRATEGIES = ("greedy", "sample", "beam")


def is_integer(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DecodingConfig:
    strategy: str = "greedy"  # greedy | sample | beam
    max_new_tokens: int = 128
    temperature: float = 0.9
    top_p: float = 0.95
    top_k: int = 50  # 0 disables
    num_beams: int = 3
    length_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int = 2
    seed: int | None = None

    def validate(self) -> None:
        """InputError naming the first field out of range."""
        if self.strategy not in STRATEGIES:
            raise InputError(f"decoding strategy: expected one of {STRATEGIES}, found {self.strategy!r}")
        for name in ("max_new_tokens", "top_k", "num_beams", "pad_token_id"):
            if not is_integer(getattr(self, name)):
                raise InputError(f"{name}: expected an integer, found {getattr(self, name)!r}")
        for name in ("temperature", "top_p", "length_penalty"):
            if not is_number(getattr(self, name)):
                raise InputError(f"{name}: expected a finite number, found {getattr(self, name)!r}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens: expected >= 1, found {self.max_new_tokens}")
        if self.strategy == "sample" and not self.temperature > 0:
            raise InputError(f"temperature: expected > 0 for sampling, found {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p: expected a value in (0, 1], found {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k: expected >= 0 (0 disables it), found {self.top_k}")
        if self.num_beams < 1:
            raise InputError(f"num_beams: expected >= 1, found {self.num_beams}")
        if not isinstance(self.eos_token_ids, tuple) or not all(is_integer(t) and t >= 0 for t in self.eos_token_ids):
            raise InputError(f"eos_token_ids: expected a tuple of token ids >= 0, found {self.eos_token_ids!r}")
        if self.seed is not None and not (is_integer(self.seed) and self.seed >= 0):  # numpy's generators take no less
            raise InputError(f"seed: expected an integer >= 0 (or none: a fresh seed each run), found {self.seed!r}")

    def replace(self, **changes) -> "DecodingConfig":
        """A copy with `changes` applied (eos_token_ids may be a list), validated."""
        unknown = sorted(set(changes) - FIELDS)
        if unknown:
            raise InputError(f"decoding: expected fields among {sorted(FIELDS)}, found unexpected {unknown}")
        if isinstance(changes.get("eos_token_ids"), list):
            changes["eos_token_ids"] = tuple(changes["eos_token_ids"])
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DecodingConfig":
        """Fields left out take their defaults; the result is validated."""
        if not isinstance(d, dict):
            raise InputError(f"decoding: expected a JSON object of {sorted(FIELDS)}, found {d!r}")
        return cls().replace(**d)


FIELDS = frozenset(f.name for f in fields(DecodingConfig))

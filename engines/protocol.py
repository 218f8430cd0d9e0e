"""The Engine protocol every backend implements: I/O keyed by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output. `shape` holds ints for fixed axes and strings for symbolic ones."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))


@runtime_checkable
class Engine(Protocol):
    """What every backend opens (engines.registry.open_engine / open_file): I/O keyed by name."""

    name: str

    def inputs(self) -> list[TensorSpec]: ...

    def outputs(self) -> list[TensorSpec]: ...

    def run(self, feeds: dict[str, np.ndarray], out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The outputs by name. Outputs named in `out` are written into those arrays (C-contiguous, of the output's
        shape) and returned as they are; an array there may also be one of the feeds: the decode graph's KV
        buffers are read and updated in place."""
        ...

    def close(self) -> None: ...

    def metadata(self) -> dict[str, str]:
        """The graph's custom metadata (PP-OCR's character dictionary)."""
        ...


def check_feeds(specs: list[TensorSpec], feeds: dict[str, np.ndarray], *, engine: str) -> None:
    """Raise InputError unless `feeds` has exactly the named inputs with matching dtype and rank/fixed dims."""
    from .errors import InputError

    expected = {s.name: s for s in specs}
    missing = sorted(set(expected) - set(feeds))
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        raise InputError(
            f"{engine}: expected inputs {sorted(expected)}, missing {missing}, unexpected {extra}"
        )
    for name, spec in expected.items():
        arr = feeds[name]
        if str(arr.dtype) != spec.dtype:
            raise InputError(f"{engine}: input '{name}' expected dtype {spec.dtype}, found {arr.dtype}")
        if arr.ndim != len(spec.shape):
            raise InputError(
                f"{engine}: input '{name}' expected rank {len(spec.shape)} {list(spec.shape)}, "
                f"found shape {list(arr.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise InputError(
                    f"{engine}: input '{name}' axis {axis} expected {want}, found {got} (shape {list(arr.shape)})"
                )

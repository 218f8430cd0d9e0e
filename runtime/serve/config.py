"""What `moai-edge serve` is told: where it listens, who may ask, and how much it takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moai_edge.engines.errors import InputError

from ..limits import check_range
from .errors import RequestRefused


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # localhost unless told otherwise
    port: int = 8000
    api_key: str | None = None  # given: every endpoint but /health* needs `Authorization: Bearer <key>`
    allow_paths: tuple[Path, ...] = ()  # folders an image_url may name local files in; none: no local files
    max_queue: int = 8  # requests waiting for the model; one more gets 429
    max_batch: int = 1  # requests answered as one batch (same decoding settings)
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000  # width x height of an image, read from its header before it is decoded
    max_new_tokens: int | None = None  # the most a request may ask for; None: the package's context decides
    warmup: bool = True  # answer one question on a sample image before /health/ready says ready
    shutdown_timeout_s: float = 10.0  # on SIGTERM, how long requests in flight may take before they are cut
    read_timeout_s: float = 30.0  # how long a request's head, and then its body, may take to arrive (408 after)
    decode_workers: int = 2  # images read and decoded at once, on a pool of their own (admitted requests only)
    stuck_after_s: float = 300.0  # /health/ready says 503 once one answer has run this long
    allow_origins: tuple[str, ...] = ()  # browser origins (scheme://host[:port]) allowed to call; none: same origin
    allow_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback and `host` when no api_key is set

    def __post_init__(self) -> None:
        check_range("port", self.port, 0, 65535)
        check_range("max_queue", self.max_queue, 1, 1 << 16)
        check_range("max_batch", self.max_batch, 1, 1024)
        check_range("max_body_bytes", self.max_body_bytes, 1024, 1 << 34)
        check_range("max_pixels", self.max_pixels, 1, 1 << 34)
        if self.max_new_tokens is not None:
            check_range("max_new_tokens", self.max_new_tokens, 1, 1 << 20)
        check_range("decode_workers", self.decode_workers, 1, 64)
        for name in ("shutdown_timeout_s", "read_timeout_s", "stuck_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86_400:
                raise InputError(f"{name}: expected a number of seconds above 0 and at most 86400, found {value!r}")
        for origin in self.allow_origins:
            if origin != "*" and (not isinstance(origin, str) or "://" not in origin or origin.endswith("/")):
                raise InputError(f"allow_origins: expected origins like 'http://localhost:3000' (scheme://host[:port], "
                                 f"no path) or '*', found {origin!r}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise InputError(f"batch_wait_ms: expected 0 to 10000 ms, found {self.batch_wait_ms!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("api_key: expected a non-empty key, found an empty string")
        for folder in self.allow_paths:
            if not Path(folder).is_dir():
                raise InputError(f"allow_paths: expected existing folders, found '{folder}'")

    def check_new_tokens(self, n: int, option: str = "max_new_tokens") -> None:
        """400 for a request that asks for more tokens than this server answers with."""
        if self.max_new_tokens is not None and n > self.max_new_tokens:
            raise RequestRefused(400, f"{option}: this server answers with at most {self.max_new_tokens} tokens, "
                                      f"found {n}")

"""The generation loop: greedy, sampling and beam search over a prefill result and a decode step.

Semantics are Hugging Face transformers' `generate` (the reference calls it): HF's warper order
for sampling (temperature, top-k, top-p) and its beam search (2*num_beams candidates per step,
finished hypotheses only from the top num_beams, scores normalised by generated length, its
early-stop heuristic for early_stopping=False). `export/reference_generate.py` is the PyTorch twin.

The caller owns the KV cache: `step(tokens (R,)) -> logits (R, V)` advances it one position and
`select_rows(index)` reorders, duplicates or drops its rows (new row j = old row index[j]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from moai_edge.engines.errors import InputError

STRATEGIES = ("greedy", "sample", "beam")
NEG = np.float32(-1.0e9)  # HF's "impossible" score


@dataclass(frozen=True)
class DecodingConfig:
    strategy: str = "greedy"
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
        if self.strategy not in STRATEGIES:
            raise InputError(f"decoding strategy must be one of {STRATEGIES}, found '{self.strategy}'")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, found {self.max_new_tokens}")
        if self.strategy == "sample" and not self.temperature > 0:
            raise InputError(f"sampling needs temperature > 0, found {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], found {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 disables it), found {self.top_k}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be >= 1, found {self.num_beams}")


Step = Callable[[np.ndarray], np.ndarray]
SelectRows = Callable[[np.ndarray], None]
OnToken = Callable[[int, int], None]


def generate(first_logits: np.ndarray, step: Step, select_rows: SelectRows, cfg: DecodingConfig, *,
             on_token: OnToken | None = None) -> list[list[int]]:
    """Per input row, the generated ids in order, the eos token included when one was generated."""
    cfg.validate()
    if cfg.strategy == "beam":
        rows = beam_search(first_logits, step, select_rows, cfg)
        for r, ids in enumerate(rows):
            for t in ids:
                on_token and on_token(r, t)
        return rows
    return sample_or_greedy(first_logits, step, select_rows, cfg, on_token)


# ---- greedy and sampling ----------------------------------------------------------------
def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def warp(logits: np.ndarray, cfg: DecodingConfig) -> np.ndarray:
    """HF's TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, in that order."""
    x = logits.astype(np.float32)
    if cfg.temperature != 1.0:
        x = x / np.float32(cfg.temperature)
    if 0 < cfg.top_k < x.shape[-1]:
        kth = np.partition(x, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if cfg.top_p < 1.0:
        order = np.argsort(x, axis=-1, kind="stable")  # ascending
        probs = np.exp(log_softmax(np.take_along_axis(x, order, axis=-1)))
        remove_sorted = np.cumsum(probs, axis=-1) <= 1 - cfg.top_p
        remove_sorted[:, -1] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        x = np.where(remove, -np.inf, x)
    return x


def pick_tokens(logits: np.ndarray, cfg: DecodingConfig, rng: np.random.Generator) -> np.ndarray:
    if cfg.strategy == "greedy":
        return logits.argmax(axis=-1).astype(np.int64)
    probs = np.exp(log_softmax(warp(logits, cfg)).astype(np.float64))
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(len(logits)) * cdf[:, -1]
    idx = np.array([np.searchsorted(c, x, side="right") for c, x in zip(cdf, u)], np.int64)
    return np.minimum(idx, logits.shape[-1] - 1)


def sample_or_greedy(first_logits: np.ndarray, step: Step, select_rows: SelectRows, cfg: DecodingConfig,
                     on_token: OnToken | None) -> list[list[int]]:
    rng = np.random.default_rng(cfg.seed)
    out: list[list[int]] = [[] for _ in range(len(first_logits))]
    active = np.arange(len(first_logits))  # the input row each cache row holds
    logits = first_logits
    eos = np.asarray(cfg.eos_token_ids, np.int64)
    for t in range(cfg.max_new_tokens):
        tokens = pick_tokens(logits, cfg, rng)  # (R,)
        for row, tok in zip(active, tokens):
            out[row].append(int(tok))
            on_token and on_token(int(row), int(tok))
        alive = ~np.isin(tokens, eos)
        if t == cfg.max_new_tokens - 1 or not alive.any():
            break
        if not alive.all():  # finished rows leave the batch and cost no more decode work
            keep = np.nonzero(alive)[0]
            select_rows(keep)
            active, tokens = active[keep], tokens[keep]
        logits = step(tokens)
    return out


# ---- beam search ---------------------------------------------------------------------------
def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Gather along axis 1 per batch row: a (B, n, ...), idx (B, m) -> (B, m, ...)."""
    return a[np.arange(len(a))[:, None], idx]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, best first (ties: lower index first)."""
    part = np.argpartition(-scores, k - 1, axis=-1)[:, :k] if k < scores.shape[-1] else np.tile(np.arange(scores.shape[-1]), (len(scores), 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def beam_search(first_logits: np.ndarray, step: Step, select_rows: SelectRows, cfg: DecodingConfig) -> list[list[int]]:
    b, vocab = first_logits.shape
    nb, max_new, lp = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    eos = np.asarray(cfg.eos_token_ids, np.int64)
    keep = max(2, 1 + len(eos)) * nb  # candidates per input row
    running = np.zeros((b, nb, 0), np.int64)  # generated ids of the live beams
    running_scores = np.zeros((b, nb), np.float32)
    running_scores[:, 1:] = NEG  # the beams start as copies: only beam 0 is live
    done_seq = np.full((b, nb, max_new), cfg.pad_token_id, np.int64)
    done_len = np.zeros((b, nb), np.int64)
    done_scores = np.full((b, nb), NEG, np.float32)
    done = np.zeros((b, nb), bool)
    improvable = np.ones(b, bool)
    logits, rows_per_input = first_logits, 1  # the cache holds one row per input until the beams fork
    for cur in range(max_new):
        logp = log_softmax(logits).reshape(b, rows_per_input, vocab)
        scores = (np.broadcast_to(logp, (b, nb, vocab)) + running_scores[:, :, None]).reshape(b, nb * vocab)
        top = _top(scores, keep)  # (B, keep)
        top_scores = np.take_along_axis(scores, top, axis=-1)
        src_beam, tokens = top // vocab, top % vocab
        cand = np.concatenate([_take(running, src_beam), tokens[:, :, None]], axis=2)  # (B, keep, cur+1)
        hits = np.isin(tokens, eos) | (cur + 1 >= max_new)
        # the best non-finished candidates continue
        live_scores = top_scores + hits.astype(np.float32) * NEG
        nxt = _top(live_scores, nb)
        running, running_scores, src = _take(cand, nxt), _take(live_scores, nxt), _take(src_beam, nxt)
        # finished candidates within the top num_beams compete with the finished ones so far
        just = hits & (np.arange(keep) < nb)[None]
        fin = top_scores / np.float32((cur + 1) ** lp)
        fin = fin + (~improvable[:, None]).astype(np.float32) * NEG + (~just).astype(np.float32) * NEG
        cand_full = np.full((b, keep, max_new), cfg.pad_token_id, np.int64)
        cand_full[:, :, : cur + 1] = cand
        merged = np.concatenate([done_scores, fin], axis=1)
        best = _top(merged, nb)
        done_seq = _take(np.concatenate([done_seq, cand_full], axis=1), best)
        done_len = _take(np.concatenate([done_len, np.full((b, keep), cur + 1)], axis=1), best)
        done = _take(np.concatenate([done, just], axis=1), best)
        done_scores = _take(merged, best)
        # HF's early-stop heuristic (early_stopping=False): can the best live beam still win?
        best_live = running_scores[:, :1] / np.float32((cur + 1) ** lp)
        worst_done = np.where(done, done_scores.min(axis=1, keepdims=True), NEG)
        improvable &= (best_live > worst_done).any(axis=1)
        if not improvable.any() or hits.all():
            break
        src_row = src if rows_per_input > 1 else np.zeros_like(src)
        select_rows((np.arange(b)[:, None] * rows_per_input + src_row).reshape(-1))
        rows_per_input = nb
        logits = step(running[:, :, -1].reshape(-1))
    return [done_seq[r, 0, : done_len[r, 0]].tolist() for r in range(b)]

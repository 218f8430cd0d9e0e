"""The generation loop: greedy, sampling and beam search over a prefill result and a decode step (numpy only).

Semantics are Hugging Face transformers' `generate` (5.x): the warper order of `_sample` (temperature,
top-k, top-p) and `_beam_search` with its helpers. `bench/reference/generate.py` is the PyTorch twin.

The caller owns the KV cache: `step(tokens (R,)) -> logits (R, V)` advances it one position and
`select_rows(index (R',))` reorders, duplicates or drops its rows (new row j = old row index[j]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError

from ..contracts import OnToken, ShouldStop

IMPOSSIBLE = np.float32(-1.0e9)  # HF's score of a beam that must not be chosen

Step = Callable[[np.ndarray], np.ndarray]
SelectRows = Callable[[np.ndarray], None]


def generate(first_logits: np.ndarray, step: Step, select_rows: SelectRows, cfg: DecodingConfig, *,
             on_token: OnToken | None = None, should_stop: ShouldStop | None = None) -> list[list[int]]:
    """Per input row, the generated ids in order, the eos token included when one was generated. `on_token` hears
    each token as it is chosen (beam search: each row's final tokens at the end); returning False from it stops
    that row's decoding as an eos would, without the token being taken back. `should_stop(row)` is asked between
    steps, for every strategy: True stops the row there (beam search: its best finished hypothesis so far, if any)."""
    cfg.validate()
    check_logits(first_logits, rows=None, vocab=None)
    if cfg.strategy != "beam":
        return decode_rows(first_logits, step, select_rows, cfg, on_token, should_stop)
    rows = beam_search(first_logits, step, select_rows, cfg, should_stop)
    if on_token is not None:
        for r, ids in enumerate(rows):
            for t in ids:
                on_token(r, t)
    return rows


def check_logits(logits: np.ndarray, rows: int | None, vocab: int | None) -> None:
    shape = getattr(logits, "shape", None)
    expected = f"({rows if rows is not None else 'rows'}, {vocab if vocab is not None else 'vocab'})"
    if shape is None or len(shape) != 2 or (rows is not None and shape[0] != rows) or \
            (vocab is not None and shape[1] != vocab):
        raise InputError(f"logits: expected shape {expected}, found {shape}")


def step_logits(step: Step, tokens: np.ndarray, vocab: int) -> np.ndarray:
    logits = step(tokens.astype(np.int64))  # (R, V)
    check_logits(logits, rows=len(tokens), vocab=vocab)
    return logits


def teacher_force(first_logits: np.ndarray, step: Step, tokens: list[int]) -> np.ndarray:
    """One row fed `tokens` in turn, whatever it would choose: the logits (len(tokens), V) before each of them."""
    check_logits(first_logits, rows=1, vocab=None)
    logits = [first_logits]
    for token in tokens[:-1]:
        logits.append(step_logits(step, np.array([token]), first_logits.shape[1]))
    return np.concatenate(logits)


# ---- greedy and sampling ----------------------------------------------------------------
def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(x))


def apply_temperature(x: np.ndarray, temperature: float) -> np.ndarray:
    return x / np.float32(temperature) if temperature != 1.0 else x


def apply_top_k(x: np.ndarray, top_k: int) -> np.ndarray:
    """TopKLogitsWarper: keep every value >= the k-th largest."""
    if not 0 < top_k < x.shape[-1]:
        return x
    kth = np.partition(x, -top_k, axis=-1)[:, -top_k, None]  # (R, 1)
    return np.where(x < kth, -np.inf, x).astype(np.float32)


def apply_top_p(x: np.ndarray, top_p: float) -> np.ndarray:
    """TopPLogitsWarper: drop the ascending-sorted tokens whose cumulative probability is <= 1 - top_p."""
    if top_p >= 1.0:
        return x
    order = np.argsort(x, axis=-1, kind="stable")  # (R, V) ascending
    cum = np.cumsum(softmax(np.take_along_axis(x, order, axis=-1)), axis=-1)
    remove_sorted = cum <= np.float32(1 - top_p)
    remove_sorted[:, -1] = False  # min_tokens_to_keep = 1
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, x).astype(np.float32)


def warp(logits: np.ndarray, cfg: DecodingConfig) -> np.ndarray:
    """HF's sampling processors in its order: temperature, top-k, top-p."""
    x = apply_temperature(logits.astype(np.float32), cfg.temperature)
    return apply_top_p(apply_top_k(x, cfg.top_k), cfg.top_p)


def sample(logits: np.ndarray, cfg: DecodingConfig, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row by inverse CDF on a uniform; zero-probability tokens are never drawn."""
    probs = softmax(warp(logits, cfg)).astype(np.float64)  # (R, V)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(len(probs)) * cdf[:, -1]  # (R,) in [0, total)
    return (cdf <= u[:, None]).sum(axis=-1).astype(np.int64)


def next_tokens(logits: np.ndarray, cfg: DecodingConfig, rng: np.random.Generator) -> np.ndarray:
    if cfg.strategy == "greedy":
        return logits.argmax(axis=-1).astype(np.int64)
    return sample(logits, cfg, rng)


def decode_rows(first_logits: np.ndarray, step: Step, select_rows: SelectRows, cfg: DecodingConfig,
                on_token: OnToken | None, should_stop: ShouldStop | None = None) -> list[list[int]]:
    """Greedy or sampling; rows that emit an eos, or that `on_token` stops, leave the caller's cache and cost no more
    decode work."""
    rng = np.random.default_rng(cfg.seed)
    vocab = first_logits.shape[1]
    eos = np.asarray(cfg.eos_token_ids, np.int64)
    out: list[list[int]] = [[] for _ in range(len(first_logits))]
    active = np.arange(len(first_logits))  # (R,) the input row each cache row holds
    logits = first_logits
    for t in range(cfg.max_new_tokens):
        tokens = next_tokens(logits, cfg, rng)  # (R,)
        alive = ~np.isin(tokens, eos)
        for i, (row, tok) in enumerate(zip(active.tolist(), tokens.tolist())):
            out[row].append(tok)
            if on_token is not None and on_token(row, tok) is False or should_stop is not None and should_stop(row):
                alive[i] = False
        if t == cfg.max_new_tokens - 1 or not alive.any():
            break
        if not alive.all():
            keep = np.nonzero(alive)[0].astype(np.int64)
            select_rows(keep)
            active, tokens = active[keep], tokens[keep]
        logits = step_logits(step, tokens, vocab)
    return out


# ---- beam search (transformers' _beam_search, early_stopping=False, do_sample=False) -----------
def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, N) -> (B, k) indices of the k largest per row, best first; ties: lower index first."""
    n = scores.shape[-1]
    if k < n:
        idx = np.sort(np.argpartition(-scores, k - 1, axis=-1)[:, :k], axis=-1)
    else:
        idx = np.broadcast_to(np.arange(n), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, idx, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(idx, order, axis=-1)


def gather_beams(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a (B, n, ...), idx (B, m) -> (B, m, ...)"""
    return a[np.arange(len(a))[:, None], idx]


@dataclass
class BeamState:
    running: np.ndarray  # (B, nb, t) generated ids of the live beams
    running_scores: np.ndarray  # (B, nb) sum of log-probs, IMPOSSIBLE when not live
    done_seq: np.ndarray  # (B, nb, max_new) finished hypotheses, best first, padded
    done_len: np.ndarray  # (B, nb)
    done_scores: np.ndarray  # (B, nb) length-normalised
    done: np.ndarray  # (B, nb) bool: the slot holds a finished hypothesis
    improvable: np.ndarray  # (B,) HF's is_early_stop_heuristic_unsatisfied


def init_beams(b: int, cfg: DecodingConfig) -> BeamState:
    nb = cfg.num_beams
    running_scores = np.zeros((b, nb), np.float32)
    running_scores[:, 1:] = IMPOSSIBLE  # the beams start as copies: only beam 0 may be extended
    return BeamState(running=np.zeros((b, nb, 0), np.int64), running_scores=running_scores,
                     done_seq=np.full((b, nb, cfg.max_new_tokens), cfg.pad_token_id, np.int64),
                     done_len=np.zeros((b, nb), np.int64), done_scores=np.full((b, nb), IMPOSSIBLE, np.float32),
                     done=np.zeros((b, nb), bool), improvable=np.ones(b, bool))


def accumulated_scores(logits: np.ndarray, s: BeamState, vocab: int) -> np.ndarray:
    """(B*rows, V) logits -> (B, nb*V) running score + log-prob; before the fork there is one row per input."""
    b, nb = s.running_scores.shape
    logp = log_softmax(logits).reshape(b, -1, vocab)  # (B, 1 or nb, V)
    return (np.broadcast_to(logp, (b, nb, vocab)) + s.running_scores[:, :, None]).reshape(b, nb * vocab)


def top_continuations(scores: np.ndarray, s: BeamState, keep: int, vocab: int):
    """HF _get_top_k_continuations: the `keep` best (beam, token) pairs over all beams of an input row."""
    top = top_k_indices(scores, min(keep, scores.shape[-1]))  # (B, K)
    top_scores = np.take_along_axis(scores, top, axis=-1)  # (B, K)
    src_beam, tokens = top // vocab, top % vocab
    seqs = np.concatenate([gather_beams(s.running, src_beam), tokens[:, :, None]], axis=2)  # (B, K, t+1)
    return top_scores, seqs, src_beam


def keep_running(s: BeamState, top_scores, seqs, src_beam, hits, nb: int) -> np.ndarray:
    """HF _get_running_beams_for_next_iteration; returns (B, nb) the source beam of each new live beam."""
    live_scores = top_scores + hits.astype(np.float32) * IMPOSSIBLE
    nxt = top_k_indices(live_scores, nb)  # (B, nb)
    s.running, s.running_scores = gather_beams(seqs, nxt), gather_beams(live_scores, nxt)
    return gather_beams(src_beam, nxt)


def update_finished(s: BeamState, top_scores, seqs, hits, gen_len: int, cfg: DecodingConfig) -> None:
    """HF _update_finished_beams: finishers within the top num_beams compete with the finished so far."""
    b, k, _ = seqs.shape
    nb = cfg.num_beams
    just = hits & (np.arange(k) < nb)[None]  # (B, K)
    fin = top_scores / np.float32(gen_len ** cfg.length_penalty)
    fin = fin + (~s.improvable[:, None]).astype(np.float32) * IMPOSSIBLE
    fin = fin + (~just).astype(np.float32) * IMPOSSIBLE
    padded = np.full((b, k, cfg.max_new_tokens), cfg.pad_token_id, np.int64)
    padded[:, :, :gen_len] = seqs
    merged = np.concatenate([s.done_scores, fin], axis=1)  # (B, nb+K)
    best = top_k_indices(merged, nb)
    s.done_seq = gather_beams(np.concatenate([s.done_seq, padded], axis=1), best)
    s.done_len = gather_beams(np.concatenate([s.done_len, np.full((b, k), gen_len)], axis=1), best)
    s.done = gather_beams(np.concatenate([s.done, just], axis=1), best)
    s.done_scores = gather_beams(merged, best)


def update_improvable(s: BeamState, gen_len: int, length_penalty: float) -> None:
    """HF _check_early_stop_heuristic for early_stopping=False: best live score at the current length."""
    best_live = s.running_scores[:, :1] / np.float32(gen_len ** length_penalty)  # (B, 1)
    worst_done = np.where(s.done, s.done_scores.min(axis=1, keepdims=True), IMPOSSIBLE)  # (B, nb)
    s.improvable &= (best_live > worst_done).any(axis=1)


def beam_search(first_logits: np.ndarray, step: Step, select_rows: SelectRows, cfg: DecodingConfig,
                should_stop: ShouldStop | None = None) -> list[list[int]]:
    b, vocab = first_logits.shape
    nb = cfg.num_beams
    keep = max(2, 1 + len(cfg.eos_token_ids)) * nb  # candidates per input row, as HF
    eos = np.asarray(cfg.eos_token_ids, np.int64)
    s = init_beams(b, cfg)
    logits, rows_per_input = first_logits, 1  # the cache holds one row per input until the beams fork
    for t in range(cfg.max_new_tokens):
        gen_len = t + 1  # generated tokens including this step's
        scores = accumulated_scores(logits, s, vocab)  # (B, nb*V)
        top_scores, seqs, src_beam = top_continuations(scores, s, keep, vocab)
        hits = np.isin(seqs[:, :, -1], eos) | (gen_len >= cfg.max_new_tokens)  # (B, K) eos or max length
        src = keep_running(s, top_scores, seqs, src_beam, hits, nb)
        update_finished(s, top_scores, seqs, hits, gen_len, cfg)
        update_improvable(s, gen_len, cfg.length_penalty)
        if should_stop is not None:
            s.improvable &= ~np.array([should_stop(r) for r in range(b)])
        if not s.improvable.any() or hits.all():
            break
        src_row = src if rows_per_input > 1 else np.zeros_like(src)  # first call: repeat(arange(B), nb)
        select_rows((np.arange(b)[:, None] * rows_per_input + src_row).reshape(-1).astype(np.int64))
        rows_per_input = nb
        logits = step_logits(step, s.running[:, :, -1].reshape(-1), vocab)
    return [s.done_seq[r, 0, : s.done_len[r, 0]].tolist() for r in range(b)]

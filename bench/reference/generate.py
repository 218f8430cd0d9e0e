"""The PyTorch parity oracle of the runtime's generation loop, written like transformers' `generate` (5.x:
`_sample`, `_beam_search` and its helpers) and checked against it in tests/runtime/test_generation.py.

Same contract as runtime/decoding/generation.py, whose logic this module does not share (only DecodingConfig):
`step(tokens (R,)) -> logits (R, V)`
advances the caller's cache, `select_rows(index (R',))` makes new row j = old row index[j]; the result is the
generated ids per input row, the eos token included when one was generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from moai_edge.engines.errors import InputError
from moai_edge.engines.decoding import DecodingConfig

IMPOSSIBLE = -1.0e9

Step = Callable[[torch.Tensor], torch.Tensor]
SelectRows = Callable[[torch.Tensor], None]
OnToken = Callable[[int, int], None]  # (row, token): hears each token; the oracle never stops early


def generate(first_logits: torch.Tensor, step: Step, select_rows: SelectRows, cfg: DecodingConfig, *,
             on_token: OnToken | None = None) -> list[list[int]]:
    cfg.validate()
    if first_logits.dim() != 2:
        raise InputError(f"first_logits: expected shape (rows, vocab), found {tuple(first_logits.shape)}")
    if cfg.strategy != "beam":
        return decode_rows(first_logits, step, select_rows, cfg, on_token)
    rows = beam_search(first_logits, step, select_rows, cfg)
    if on_token is not None:
        for r, ids in enumerate(rows):
            for t in ids:
                on_token(r, t)
    return rows


# ---- greedy and sampling (transformers' _sample) ----------------------------------------------
def warp(logits: torch.Tensor, cfg: DecodingConfig) -> torch.Tensor:
    """TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, as transformers builds and applies them."""
    x = logits.float()
    if cfg.temperature != 1.0:
        x = x / cfg.temperature
    top_k = min(cfg.top_k, x.shape[-1])
    if top_k > 0:
        x = x.masked_fill(x < torch.topk(x, top_k)[0][..., -1, None], -float("inf"))
    if cfg.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=False)
        remove_sorted = sorted_x.softmax(dim=-1).cumsum(dim=-1) <= (1 - cfg.top_p)
        remove_sorted[..., -1:] = False  # min_tokens_to_keep = 1
        x = x.masked_fill(remove_sorted.scatter(1, order, remove_sorted), -float("inf"))
    return x


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def next_tokens(logits: torch.Tensor, cfg: DecodingConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.strategy == "greedy":
        return logits.argmax(dim=-1)
    probs = F.softmax(warp(logits, cfg), dim=-1)  # (R, V)
    return torch.multinomial(probs, num_samples=1, generator=gen).squeeze(1)


def decode_rows(first_logits: torch.Tensor, step: Step, select_rows: SelectRows, cfg: DecodingConfig,
                on_token: OnToken | None) -> list[list[int]]:
    gen = make_generator(cfg.seed)
    eos = torch.tensor(cfg.eos_token_ids, dtype=torch.long)
    out: list[list[int]] = [[] for _ in range(len(first_logits))]
    active = torch.arange(len(first_logits))  # (R,) the input row each cache row holds
    logits = first_logits
    for t in range(cfg.max_new_tokens):
        tokens = next_tokens(logits, cfg, gen).long()  # (R,)
        for row, tok in zip(active.tolist(), tokens.tolist()):
            out[row].append(tok)
            if on_token is not None:
                on_token(row, tok)
        alive = ~torch.isin(tokens, eos)
        if t == cfg.max_new_tokens - 1 or not alive.any():
            break
        if not alive.all():
            keep = torch.nonzero(alive).squeeze(1)
            select_rows(keep)
            active, tokens = active[keep], tokens[keep]
        logits = step(tokens)
    return out


# ---- beam search (transformers' _beam_search, do_sample=False, early_stopping=False) -------------
def gather_beams(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """a (B, n, ...), idx (B, m) -> (B, m, ...)"""
    return a[torch.arange(len(a))[:, None], idx]


@dataclass
class BeamState:
    running: torch.Tensor  # (B, nb, t)
    running_scores: torch.Tensor  # (B, nb)
    done_seq: torch.Tensor  # (B, nb, max_new)
    done_len: torch.Tensor  # (B, nb)
    done_scores: torch.Tensor  # (B, nb)
    done: torch.Tensor  # (B, nb) bool
    improvable: torch.Tensor  # (B,) bool: is_early_stop_heuristic_unsatisfied


def init_beams(b: int, cfg: DecodingConfig) -> BeamState:
    nb = cfg.num_beams
    running_scores = torch.zeros((b, nb))
    running_scores[:, 1:] = IMPOSSIBLE
    return BeamState(running=torch.zeros((b, nb, 0), dtype=torch.long), running_scores=running_scores,
                     done_seq=torch.full((b, nb, cfg.max_new_tokens), cfg.pad_token_id, dtype=torch.long),
                     done_len=torch.zeros((b, nb), dtype=torch.long), done_scores=torch.full((b, nb), IMPOSSIBLE),
                     done=torch.zeros((b, nb), dtype=torch.bool), improvable=torch.ones(b, dtype=torch.bool))


def accumulated_scores(logits: torch.Tensor, s: BeamState, vocab: int) -> torch.Tensor:
    b, nb = s.running_scores.shape
    logp = F.log_softmax(logits.float(), dim=-1).reshape(b, -1, vocab).expand(b, nb, vocab)
    return (logp + s.running_scores[:, :, None]).reshape(b, nb * vocab)


def top_continuations(scores: torch.Tensor, s: BeamState, keep: int, vocab: int):
    top_scores, top = torch.topk(scores, k=keep)  # (B, K)
    src_beam, tokens = top // vocab, top % vocab
    seqs = torch.cat([gather_beams(s.running, src_beam), tokens[:, :, None]], dim=2)  # (B, K, t+1)
    return top_scores, seqs, src_beam


def keep_running(s: BeamState, top_scores, seqs, src_beam, hits, nb: int) -> torch.Tensor:
    live_scores = top_scores + hits.float() * IMPOSSIBLE
    nxt = torch.topk(live_scores, k=nb)[1]
    s.running, s.running_scores = gather_beams(seqs, nxt), gather_beams(live_scores, nxt)
    return gather_beams(src_beam, nxt)


def update_finished(s: BeamState, top_scores, seqs, hits, gen_len: int, cfg: DecodingConfig) -> None:
    b, k, _ = seqs.shape
    nb = cfg.num_beams
    just = hits & (torch.arange(k) < nb)[None]
    fin = top_scores / (gen_len ** cfg.length_penalty)
    fin = fin + (~s.improvable[:, None]).float() * IMPOSSIBLE
    fin = fin + (~just).float() * IMPOSSIBLE
    padded = torch.full((b, k, cfg.max_new_tokens), cfg.pad_token_id, dtype=torch.long)
    padded[:, :, :gen_len] = seqs
    merged = torch.cat([s.done_scores, fin], dim=1)
    best = torch.topk(merged, k=nb)[1]
    s.done_seq = gather_beams(torch.cat([s.done_seq, padded], dim=1), best)
    s.done_len = gather_beams(torch.cat([s.done_len, torch.full((b, k), gen_len)], dim=1), best)
    s.done = gather_beams(torch.cat([s.done, just], dim=1), best)
    s.done_scores = gather_beams(merged, best)


def update_improvable(s: BeamState, gen_len: int, length_penalty: float) -> None:
    best_live = s.running_scores[:, :1] / (gen_len ** length_penalty)
    worst_done = torch.where(s.done, s.done_scores.min(dim=1, keepdim=True)[0], torch.tensor(IMPOSSIBLE))
    s.improvable &= (best_live > worst_done).any(dim=1)


def beam_search(first_logits: torch.Tensor, step: Step, select_rows: SelectRows,
                cfg: DecodingConfig) -> list[list[int]]:
    b, vocab = first_logits.shape
    nb = cfg.num_beams
    keep = max(2, 1 + len(cfg.eos_token_ids)) * nb
    eos = torch.tensor(cfg.eos_token_ids, dtype=torch.long)
    s = init_beams(b, cfg)
    logits, rows_per_input = first_logits, 1
    for t in range(cfg.max_new_tokens):
        gen_len = t + 1
        scores = accumulated_scores(logits, s, vocab)  # (B, nb*V)
        top_scores, seqs, src_beam = top_continuations(scores, s, keep, vocab)
        hits = torch.isin(seqs[:, :, -1], eos) | (gen_len >= cfg.max_new_tokens)
        src = keep_running(s, top_scores, seqs, src_beam, hits, nb)
        update_finished(s, top_scores, seqs, hits, gen_len, cfg)
        update_improvable(s, gen_len, cfg.length_penalty)
        if not s.improvable.any() or hits.all():
            break
        src_row = src if rows_per_input > 1 else torch.zeros_like(src)
        select_rows((torch.arange(b)[:, None] * rows_per_input + src_row).reshape(-1))
        rows_per_input = nb
        logits = step(s.running[:, :, -1].reshape(-1))
    return [s.done_seq[r, 0, : s.done_len[r, 0]].tolist() for r in range(b)]

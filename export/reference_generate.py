"""The PyTorch parity oracle of the runtime's generation loop, written like transformers' `generate`
(checked against it in tests/runtime/test_generation.py). Same contract as runtime/generation.py:
`step(tokens (R,)) -> logits (R, V)`, `select_rows(index)`; returns per-row ids, eos included."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from moai_edge.runtime.generation import DecodingConfig  # configuration only: the logic here is independent

NEG = -1.0e9


def generate(first_logits: torch.Tensor, step, select_rows, cfg: DecodingConfig) -> list[list[int]]:
    if cfg.strategy == "beam":
        return beam_search(first_logits, step, select_rows, cfg)
    return sample_or_greedy(first_logits, step, select_rows, cfg)


def warp(logits: torch.Tensor, cfg: DecodingConfig) -> torch.Tensor:
    """TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper as transformers applies them."""
    x = logits.float()
    if cfg.temperature != 1.0:
        x = x / cfg.temperature
    if 0 < cfg.top_k < x.shape[-1]:
        x = x.masked_fill(x < torch.topk(x, cfg.top_k)[0][..., -1, None], -float("inf"))
    if cfg.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=False)
        remove_sorted = sorted_x.softmax(-1).cumsum(-1) <= 1 - cfg.top_p
        remove_sorted[..., -1:] = False
        x = x.masked_fill(remove_sorted.scatter(1, order, remove_sorted), -float("inf"))
    return x


def sample_or_greedy(first_logits, step, select_rows, cfg: DecodingConfig) -> list[list[int]]:
    gen = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    out = [[] for _ in range(len(first_logits))]
    active = torch.arange(len(first_logits))
    logits = first_logits
    eos = torch.tensor(cfg.eos_token_ids)
    for t in range(cfg.max_new_tokens):
        if cfg.strategy == "greedy":
            tokens = logits.argmax(-1)
        else:
            tokens = torch.multinomial(warp(logits, cfg).softmax(-1), 1, generator=gen)[:, 0]
        for row, tok in zip(active.tolist(), tokens.tolist()):
            out[row].append(tok)
        alive = ~torch.isin(tokens, eos)
        if t == cfg.max_new_tokens - 1 or not alive.any():
            break
        if not alive.all():
            keep = torch.nonzero(alive)[:, 0]
            select_rows(keep)
            active, tokens = active[keep], tokens[keep]
        logits = step(tokens)
    return out


def _take(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return a[torch.arange(len(a))[:, None], idx]


def beam_search(first_logits, step, select_rows, cfg: DecodingConfig) -> list[list[int]]:
    b, vocab = first_logits.shape
    nb, max_new, lp = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    eos = torch.tensor(cfg.eos_token_ids)
    keep = max(2, 1 + len(eos)) * nb
    running = torch.zeros((b, nb, 0), dtype=torch.long)
    running_scores = torch.zeros((b, nb))
    running_scores[:, 1:] = NEG
    done_seq = torch.full((b, nb, max_new), cfg.pad_token_id, dtype=torch.long)
    done_len = torch.zeros((b, nb), dtype=torch.long)
    done_scores = torch.full((b, nb), NEG)
    done = torch.zeros((b, nb), dtype=torch.bool)
    improvable = torch.ones(b, dtype=torch.bool)
    logits, rows_per_input = first_logits, 1
    for cur in range(max_new):
        logp = F.log_softmax(logits.float(), dim=-1).reshape(b, rows_per_input, vocab).expand(b, nb, vocab)
        scores = (logp + running_scores[:, :, None]).reshape(b, nb * vocab)
        top_scores, top = torch.topk(scores, keep)
        src_beam, tokens = top // vocab, top % vocab
        cand = torch.cat([_take(running, src_beam), tokens[:, :, None]], dim=2)
        hits = torch.isin(tokens, eos) | (cur + 1 >= max_new)
        live_scores = top_scores + hits.float() * NEG
        nxt = torch.topk(live_scores, nb)[1]
        running, running_scores, src = _take(cand, nxt), _take(live_scores, nxt), _take(src_beam, nxt)
        just = hits & (torch.arange(keep) < nb)[None]
        fin = top_scores / ((cur + 1) ** lp)
        fin = fin + (~improvable[:, None]).float() * NEG + (~just).float() * NEG
        cand_full = torch.full((b, keep, max_new), cfg.pad_token_id, dtype=torch.long)
        cand_full[:, :, : cur + 1] = cand
        merged = torch.cat([done_scores, fin], dim=1)
        best = torch.topk(merged, nb)[1]
        done_seq = _take(torch.cat([done_seq, cand_full], dim=1), best)
        done_len = _take(torch.cat([done_len, torch.full((b, keep), cur + 1)], dim=1), best)
        done = _take(torch.cat([done, just], dim=1), best)
        done_scores = _take(merged, best)
        best_live = running_scores[:, :1] / ((cur + 1) ** lp)
        worst_done = torch.where(done, done_scores.min(dim=1, keepdim=True)[0], torch.tensor(NEG))
        improvable &= (best_live > worst_done).any(dim=1)
        if not improvable.any() or hits.all():
            break
        src_row = src if rows_per_input > 1 else torch.zeros_like(src)
        select_rows((torch.arange(b)[:, None] * rows_per_input + src_row).reshape(-1))
        rows_per_input = nb
        logits = step(running[:, :, -1].reshape(-1))
    return [done_seq[r, 0, : done_len[r, 0]].tolist() for r in range(b)]

"""Assemble the prefill graph's feeds: text embeddings with the image tokens spliced in, right-padded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moai_edge.engines.errors import InputError


@dataclass
class PrefillRequest:
    """One row of a prefill batch."""

    input_ids: np.ndarray  # (T,) text ids with exactly one image token id at image_pos
    image_pos: int
    image_features: np.ndarray  # (N,H)
    seg_features: np.ndarray | None = None  # (N,H) CoLLaVO
    aux_tokens: np.ndarray | None = None  # (A,H) MoAI

    @property
    def length(self) -> int:
        return len(self.input_ids) - 1 + len(self.image_features)


def assemble_prefill(requests: list[PrefillRequest], embed_table: np.ndarray, *, max_context: int) -> dict[str, np.ndarray]:
    if not requests:
        raise InputError("a prefill batch needs at least one request, found none")
    hidden = embed_table.shape[1]
    seq = max(r.length for r in requests)
    if seq > max_context:
        raise InputError(f"prompt of {seq} tokens (image tokens included) exceeds the package's max context {max_context}")
    b = len(requests)
    embeds = np.zeros((b, seq, hidden), np.float32)
    mask = np.zeros((b, seq), np.int64)
    im_mask = np.zeros((b, seq), bool)
    seg = np.zeros((b, seq, hidden), np.float32) if requests[0].seg_features is not None else None
    for row, r in enumerate(requests):
        n, p = len(r.image_features), r.image_pos
        text = embed_table[r.input_ids]
        embeds[row, :p] = text[:p]
        embeds[row, p:p + n] = r.image_features
        embeds[row, p + n:r.length] = text[p + 1:]
        mask[row, :r.length] = 1
        im_mask[row, p:p + n] = True
        if seg is not None:
            seg[row, p:p + n] = r.seg_features
    feeds = {
        "inputs_embeds": embeds,
        "attention_mask": mask,
        "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), (b, seq)).copy(),
        "im_mask": im_mask,
    }
    if seg is not None:
        feeds["seg_features"] = seg
    if requests[0].aux_tokens is not None:
        feeds["aux_tokens"] = np.stack([r.aux_tokens for r in requests]).astype(np.float32)
    return feeds

"""Assemble the prefill graph's feeds: text embeddings with the image tokens spliced in, right-padded.

Dtypes come from the prefill graph's input specs, never from constants here.
"""

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

    @property
    def length(self) -> int:
        return len(self.input_ids) - 1 + len(self.image_features)


def assemble_prefill(requests: list[PrefillRequest], embed_table: np.ndarray, *, dtypes: dict[str, str],
                     extras: dict[str, np.ndarray] | None = None,
                     image_aligned: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """`extras`: the family's prefill inputs, one row per request. Those named in `image_aligned` ((B, N, H)) are
    placed at the image positions of a (B, L, H) input; the others are fed as they are."""
    extras = extras or {}
    if not requests:
        raise InputError("a prefill batch needs at least one request, found none")
    hidden = embed_table.shape[1]
    seq = max(r.length for r in requests)
    b = len(requests)
    embeds = np.zeros((b, seq, hidden), dtypes["inputs_embeds"])
    mask = np.zeros((b, seq), dtypes["attention_mask"])
    im_mask = np.zeros((b, seq), dtypes["im_mask"])
    aligned = {name: np.zeros((b, seq, hidden), dtypes[name]) for name in image_aligned}
    for row, r in enumerate(requests):
        n, p = len(r.image_features), r.image_pos
        text = embed_table[r.input_ids]
        embeds[row, :p] = text[:p]
        embeds[row, p:p + n] = r.image_features
        embeds[row, p + n:r.length] = text[p + 1:]
        mask[row, :r.length] = 1
        im_mask[row, p:p + n] = True
        for name, buf in aligned.items():
            buf[row, p:p + n] = extras[name][row]
    feeds = {
        "inputs_embeds": embeds,
        "attention_mask": mask,
        "position_ids": np.broadcast_to(np.arange(seq, dtype=dtypes["position_ids"]), (b, seq)).copy(),
        "im_mask": im_mask,
        **aligned,
    }
    for name in extras.keys() - set(image_aligned):
        feeds[name] = np.asarray(extras[name]).astype(dtypes[name], copy=False)
    return feeds

"""Captions keyed by id, one bad image never sinking the others.

    captioner = Captioner(pipe, batch_size=8)
    records = captioner.caption(["a", "b"], ["a.jpg", b"...png bytes"])   # in the order of the ids

The batcher is all a worker needs: the resumable JSONL job (caption.job) and a Ray Data actor both
hold one. Greedy decoding unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError, MoaiEdgeError

from ..images import load_image
from ..limits import check_batch_size, check_generation
from ..pipeline import Pipeline
from ..request import DEFAULT_QUESTION, Request


@dataclass
class CaptionRecord:
    """One image: `caption` or `error`, never both."""

    id: str
    caption: str | None = None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class Captioner:
    def __init__(self, pipeline: Pipeline, *, question: str = DEFAULT_QUESTION, decoding: DecodingConfig | None = None,
                 batch_size: int = 1):
        check_batch_size(batch_size)
        self.pipeline, self.question, self.batch_size = pipeline, question, batch_size
        self.decoding = pipeline.decoding(decoding or "greedy")
        check_generation(pipeline.manifest.model, max_new_tokens=self.decoding.max_new_tokens, rows=batch_size,
                         itemsize=pipeline.backbone.kv_itemsize)

    def caption(self, ids: list[str], images: list, *,
                on_record: Callable[[CaptionRecord], None] | None = None) -> list[CaptionRecord]:
        """One record per id, in order; `on_record` hears each as soon as its batch is done."""
        if len(ids) != len(images):
            raise InputError(f"{len(ids)} ids but {len(images)} images: expected one id per image")
        records = []
        for start in range(0, len(ids), self.batch_size):
            done = self.caption_batch(ids[start:start + self.batch_size], images[start:start + self.batch_size])
            for record in done:
                if on_record:
                    on_record(record)
            records += done
        return records

    def caption_batch(self, ids: list[str], images: list) -> list[CaptionRecord]:
        records, good = {}, []
        for i, (image_id, src) in enumerate(zip(ids, images)):
            try:
                good.append((i, image_id, load_image(src, name=f"'{image_id}'")))
            except MoaiEdgeError as exc:
                records[i] = CaptionRecord(image_id, error=str(exc))
        if len(good) > 1:
            try:
                self.caption_decoded(good, records)
            except MoaiEdgeError:  # one image the batch cannot take must not sink the others: one by one
                for item in good:
                    self.caption_one(item, records)
        elif good:
            self.caption_one(good[0], records)
        return [records[i] for i in range(len(ids))]

    def caption_one(self, item: tuple[int, str, np.ndarray], records: dict) -> None:
        try:
            self.caption_decoded([item], records)
        except MoaiEdgeError as exc:
            records[item[0]] = CaptionRecord(item[1], error=str(exc))

    def caption_decoded(self, good: list[tuple[int, str, np.ndarray]], records: dict) -> None:
        results = self.pipeline.run([Request(img, self.question, self.decoding, image_id) for _, image_id, img in good])
        for (i, image_id, _), r in zip(good, results):
            per_image = r.timings_ms["total"] / len(good)  # the batch's wall time, shared out
            records[i] = CaptionRecord(image_id, caption=r.answer, timings_ms={**r.timings_ms, "per_image": per_image})

"""The backbone: image features and the family's aux inputs in, answers out.

    features (from VisionTower) + aux (from the family) + questions
        -> family prefill extras -> prompt ids -> prefill -> decode loop -> answers

It never sees raw images. Its graphs are the family's extra graphs, prefill and decode; the decoder
weights they share are in memory once (engines/registry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError, ManifestError
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.protocol import Engine
from moai_edge.engines.registry import open_engine

from .decoder import DecoderRunner, input_dtypes
from .families import AuxInputs, Family
from .generation import generate
from .inputs import PrefillRequest, assemble_prefill
from .limits import check_generation
from .prompts import build_prompt, cut_answer
from .request import OnToken
from .timer import Timer
from .tokenizer import Tokenizer
from .vision import VisionTower


@dataclass
class Answer:
    answer: str
    tokens: list[int]
    text: str
    kv_cache_bytes: int  # the batch's KV cache, allocated once for prompt + max_new_tokens
    prompt_tokens: int  # the prompt's length in positions, image features included


class Backbone:
    def __init__(self, manifest: Manifest, options: RuntimeOptions, family: Family, vision: VisionTower):
        self.manifest, self.dims, self.family, self.vision = manifest, manifest.model, family, vision
        self.engines: dict[str, Engine] = {name: open_engine(manifest, name, options)
                                           for name in (*family.graphs, "prefill", "decode")}
        self.embed_table = manifest.load_array("embedding", mmap=True)
        tok = manifest.tokenizer["file"]
        self.tokenizer = Tokenizer.from_bytes(manifest.read_file(tok), image_token=manifest.prompts.image_token, name=tok)
        if self.tokenizer.image_token_id != self.dims.image_token_id:
            raise ManifestError(f"tokenizer gives '{manifest.prompts.image_token}' id {self.tokenizer.image_token_id}, "
                                f"the manifest expects {self.dims.image_token_id}")

    def close(self) -> None:
        for e in self.engines.values():
            e.close()
        self.engines.clear()

    @property
    def kv_itemsize(self) -> int:
        """Bytes per KV-cache element: the cache takes the decode graph's past dtype."""
        return input_dtypes(self.engines["decode"])["past_key.0"].itemsize

    def generate(self, features: np.ndarray, aux: list[AuxInputs], questions: list[str], cfg: DecodingConfig, *,
                 template: str | None = None, on_token: OnToken | None = None, timer: Timer | None = None) -> list[Answer]:
        """features (B, N, H) from the vision tower; one aux and one question per row."""
        if not len(features) == len(aux) == len(questions):
            raise InputError(f"expected one aux input and one question per image, found {len(features)} images, "
                             f"{len(aux)} aux inputs and {len(questions)} questions")
        cfg.validate()
        check_generation(self.dims, max_new_tokens=cfg.max_new_tokens, itemsize=self.kv_itemsize,
                         rows=len(features) * (cfg.num_beams if cfg.strategy == "beam" else 1))
        timer = timer or Timer()
        runner, first = self.prefill(features, aux, questions, max_new_tokens=cfg.max_new_tokens, template=template,
                                     timer=timer)
        prompt_tokens = [int(n) for n in runner.cache.lengths]
        with timer("decode"):
            rows = generate(first, runner.step, runner.select_rows, cfg, on_token=on_token)
        timer.ms["decode_per_token"] = timer.ms["decode"] / max(1, max(len(r) for r in rows) - 1)
        return [self.answer(ids, runner.cache.nbytes(), n) for ids, n in zip(rows, prompt_tokens)]

    def prefill(self, features: np.ndarray, aux: list[AuxInputs], questions: list[str], *, max_new_tokens: int,
                template: str | None = None, timer: Timer | None = None) -> tuple[DecoderRunner, np.ndarray]:
        """The prompts through prefill: a runner holding their KV cache (room for `max_new_tokens` more), and the
        logits (B, V) of each row's first answer token."""
        timer = timer or Timer()
        with timer("aux"):
            extras = self.family.prefill_extras(self, aux)
        with timer("tokenize"):
            prompts = [build_prompt(self.family.question(a, q), self.tokenizer, self.manifest.prompts, template=template)
                       for a, q in zip(aux, questions)]
        requests = [PrefillRequest(p.input_ids, p.image_pos, f, e) for p, f, e in zip(prompts, features, extras)]
        runner = DecoderRunner(prefill=self.engines["prefill"], decode=self.engines["decode"],
                               embed_table=self.embed_table, dims=self.dims)
        with timer("prefill"):
            feeds = assemble_prefill(requests, self.embed_table, dtypes=input_dtypes(self.engines["prefill"]),
                                     image_aligned=self.family.image_aligned)
            first = runner.prefill(feeds, max_new_tokens=max_new_tokens)
        return runner, first

    def answer(self, ids: list[int], kv_bytes: int, prompt_tokens: int) -> Answer:
        text = self.tokenizer.decode(ids)
        return Answer(cut_answer(text, self.manifest.prompts), list(map(int, ids)), text, kv_bytes, prompt_tokens)

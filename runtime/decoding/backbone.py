"""The backbone: image features and the family's aux inputs in, answers out.

    features (from VisionTower) + aux (from the family) + questions
        -> family head's prefill extras -> prompt ids -> prefill -> decode loop -> answers

It never sees raw images. Its graphs are prefill and decode (the decoder weights they share are in memory once,
engines/registry), and the family head's (crayon or compressor), which the head opens and owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError, ManifestError
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.protocol import Engine
from moai_edge.engines.registry import open_engine

from ..contracts import AuxInputs, OnToken, ShouldStop
from ..families import Family, HeadParts
from ..limits import check_generation
from ..timer import Timer
from .decoder import DecoderRunner, input_dtypes
from .generation import generate, teacher_force
from .prefill_inputs import PrefillRequest, assemble_prefill
from .prompts import PromptIds, build_prompt, cut_answer
from .tokenizer import Tokenizer


@dataclass
class Answer:
    answer: str
    tokens: list[int]
    text: str
    kv_cache_bytes: int  # the batch's KV cache, allocated once for prompt + max_new_tokens
    prompt_tokens: int  # the prompt's length in positions, image features included


@dataclass
class Scored:
    """One answer's tokens and the logits (T, V) the model gave before each of them."""

    tokens: list[int]
    logits: np.ndarray


class Backbone:
    def __init__(self, manifest: Manifest, options: RuntimeOptions, family: Family,
                 encode_pixels: Callable[[np.ndarray], np.ndarray]):
        self.manifest, self.dims, self.family = manifest, manifest.model, family
        tok = manifest.tokenizer["file"]
        self.tokenizer = Tokenizer.from_bytes(manifest.read_file(tok), image_token=manifest.prompts.image_token,
                                              name=tok)
        if self.tokenizer.image_token_id != self.dims.image_token_id:
            raise ManifestError(f"tokenizer gives '{manifest.prompts.image_token}' id {self.tokenizer.image_token_id}, "
                                f"the manifest expects {self.dims.image_token_id}")
        self.embed_table = manifest.load_array("embedding", mmap=True)
        self.engines: dict[str, Engine] = {name: open_engine(manifest, name, options) for name in ("prefill", "decode")}
        self.head = family.open_head(HeadParts(manifest, options, self.tokenizer, self.embed_table, encode_pixels))

    def close(self) -> None:
        self.head.close()
        for e in self.engines.values():
            e.close()
        self.engines.clear()

    @property
    def kv_itemsize(self) -> int:
        """Bytes per KV-cache element: the cache takes the decode graph's past dtype."""
        return input_dtypes(self.engines["decode"])["past_key.0"].itemsize

    def prompt(self, question: str, aux: AuxInputs, template: str | None = None) -> PromptIds:
        """The prompt's ids: the system text with the image token, the family's prefix, the question."""
        return build_prompt(self.family.question(aux, question), self.tokenizer, self.manifest.prompts,
                            template=template)

    def generate(self, features: np.ndarray, aux: list[AuxInputs], questions: list[str], cfg: DecodingConfig, *,
                 template: str | None = None, on_token: OnToken | None = None, should_stop: ShouldStop | None = None,
                 timer: Timer | None = None) -> list[Answer]:
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
            rows = generate(first, runner.step, runner.select_rows, cfg, on_token=on_token, should_stop=should_stop)
        timer.ms["decode_per_token"] = timer.ms["decode"] / max(1, max(len(r) for r in rows) - 1)
        return [self.answer(ids, runner.cache.nbytes(), n) for ids, n in zip(rows, prompt_tokens)]

    def score(self, features: np.ndarray, aux: AuxInputs, question: str, *, tokens: list[int] | None,
              max_new_tokens: int, template: str | None = None) -> Scored:
        """One image's features (N, H): the greedy answer (tokens None) or `tokens` teacher-forced, with the logits
        before each token."""
        runner, first = self.prefill(features[None], [aux], [question], max_new_tokens=max_new_tokens,
                                     template=template)
        if tokens is not None:
            return Scored(list(tokens), teacher_force(first, runner.step, tokens))
        stepped = []

        def step(ids: np.ndarray) -> np.ndarray:
            stepped.append(runner.step(ids))
            return stepped[-1]

        greedy = self.manifest.generation.replace(strategy="greedy", max_new_tokens=max_new_tokens)
        (ids,) = generate(first, step, runner.select_rows, greedy)
        return Scored(ids, np.concatenate([first, *stepped]))

    def prefill(self, features: np.ndarray, aux: list[AuxInputs], questions: list[str], *, max_new_tokens: int,
                template: str | None = None, timer: Timer | None = None) -> tuple[DecoderRunner, np.ndarray]:
        """The prompts through prefill: a runner holding their KV cache (room for `max_new_tokens` more), and the
        logits (B, V) of each row's first answer token."""
        timer = timer or Timer()
        with timer("aux"):
            extras = self.head.prefill_extras(aux)
        with timer("tokenize"):
            prompts = [self.prompt(q, a, template) for a, q in zip(aux, questions)]
        requests = [PrefillRequest(p.input_ids, p.image_pos, f) for p, f in zip(prompts, features)]
        runner = DecoderRunner(prefill=self.engines["prefill"], decode=self.engines["decode"],
                               embed_table=self.embed_table, dims=self.dims)
        with timer("prefill"):
            feeds = assemble_prefill(requests, self.embed_table, dtypes=input_dtypes(self.engines["prefill"]),
                                     extras=extras, image_aligned=self.family.image_aligned)
            first = runner.prefill(feeds, max_new_tokens=max_new_tokens)
        return runner, first

    def answer(self, ids: list[int], kv_bytes: int, prompt_tokens: int) -> Answer:
        text = self.tokenizer.decode(ids)
        return Answer(cut_answer(text, self.manifest.prompts), list(map(int, ids)), text, kv_bytes, prompt_tokens)

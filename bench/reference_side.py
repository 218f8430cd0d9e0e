"""The PyTorch reference pipeline with the same stage timings as the runtime, for `bench --reference`."""

from __future__ import annotations

import time

import numpy as np
import torch

from moai_edge.engines.manifest import Manifest
from moai_edge.export.checkpoint import load_checkpoint
from moai_edge.runtime.generation import DecodingConfig
from moai_edge.runtime.model import Timer
from moai_edge.runtime.pipeline import Pipeline

from .reference_experts import ReferenceExperts
from .reference_pipeline import ReferencePipeline


class ReferenceRunner:
    """Image -> PyTorch experts (one after another, as the reference runs them) -> verbalizer -> PyTorch model."""

    def __init__(self, manifest: Manifest, pipe: Pipeline, *, threads: int):
        if threads:
            torch.set_num_threads(threads)
        model, root = load_checkpoint(manifest.source["checkpoint"], family=manifest.family,
                                      vision_config=manifest.source.get("vision_config"))
        self.pipe, self.manifest = pipe, manifest
        self.experts = ReferenceExperts(manifest)
        self.model = ReferencePipeline(model, root / "tokenizer.model", template=manifest.prompts.default_template)

    def ask(self, image: np.ndarray, question: str, *, max_new_tokens: int) -> dict[str, float]:
        """Timings (ms) of one answer, decoding exactly `max_new_tokens`."""
        t0, timer = time.perf_counter(), Timer()
        with timer("load"):
            pixels = self.pipe.expert_input(image)
        results = self.experts.run(pixels, timer)
        with timer("verbalize"):
            aux = self.pipe.experts.aux_inputs(results)
        decoding = DecodingConfig(strategy="greedy", max_new_tokens=max_new_tokens, eos_token_ids=())
        self.model.ask(pixels, question, aux=aux, decoding=decoding, timer=timer)
        return {**timer.ms, "total": (time.perf_counter() - t0) * 1e3}

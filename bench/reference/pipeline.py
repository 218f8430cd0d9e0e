"""The PyTorch reference pipeline, with the runtime Pipeline's surface: `run(requests) -> list[Result]`.

    image -> load once (the runtime's loader) -> PyTorch experts, one after another -> the runtime family's aux
          -> reference backbone (its own resize, prompt, prefill and generate) -> Result

    with ReferencePipeline.load("pkg/tiny-moai") as ref:
        theirs = ref.ask_batch(images, questions, decoding="greedy", max_new_tokens=16)

The model is rebuilt from the checkpoint the manifest records, so a package can be checked with the weights it
came from. Results carry the runtime's stage names (load, experts, expert_<name>, verbalize, vision, aux,
tokenize, prefill, decode, decode_per_token, total), so `bench --reference` compares stage by stage and
bench.compare compares what both answered.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from moai_edge.engines.errors import CheckpointError
from moai_edge.engines.manifest import Manifest, load_manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.export.checkpoint import load_checkpoint
from moai_edge.export.modeling.vlm import VLM
from moai_edge.runtime import Asking, AuxInputs, OnToken, Request, Result, ShouldStop, Timer, family_of

from .backbone import ReferenceBackbone
from .experts import ReferenceExperts


def reference_model(manifest: Manifest) -> tuple[VLM, Path]:
    """(model, checkpoint folder) rebuilt from the checkpoint recorded in the manifest's source."""
    ckpt = manifest.source.get("checkpoint")
    if not ckpt:
        raise CheckpointError(f"{manifest.root}/manifest.json: expected source.checkpoint naming the checkpoint to "
                              f"rebuild the reference from, found none")
    return load_checkpoint(ckpt, family=manifest.family, vision_config=manifest.source.get("vision_config"))


class ReferencePipeline(Asking):
    def __init__(self, manifest: Manifest, model: VLM, tokenizer_file: str | Path,
                 options: RuntimeOptions | None = None):
        """`options.threads` sets torch's threads (0: torch's default); the OCR graphs open with `options`."""
        self.manifest, self.options = manifest, options or RuntimeOptions()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self.family = family_of(manifest.family)
        self.model = model.eval()
        self.backbone = ReferenceBackbone(model, Path(tokenizer_file), template=manifest.prompts.default_template)
        self.experts = ReferenceExperts(manifest, self.options) if manifest.experts else None

    @classmethod
    def load(cls, engine_dir: str | Path, options: RuntimeOptions | None = None) -> "ReferencePipeline":
        options = options or RuntimeOptions()
        manifest = load_manifest(engine_dir, verify_hashes=options.verify_hashes)
        model, root = reference_model(manifest)
        return cls(manifest, model, root / "tokenizer.model", options)

    def close(self) -> None:
        if self.experts is not None:
            self.experts.close()

    # ---- asking ------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, requests: list[Request], *, on_token: OnToken | None = None,
            should_stop: ShouldStop | None = None) -> list[Result]:
        """Every request one after another; `on_token` rows index `requests`. The reference decodes each answer to
        its end: `should_stop` is taken for the runtime's surface and not asked."""
        t0, timer = time.perf_counter(), Timer()
        with timer("load"):
            pixels = [self.expert_input(r.image) for r in requests]
        results = self.see(pixels, [r.aux is None for r in requests], timer)
        with timer("verbalize"):
            aux = [req.aux if req.aux is not None else self.family.aux_inputs(r) if r is not None else AuxInputs()
                   for req, r in zip(requests, results)]
        with timer("vision"):
            features = self.backbone.encode(pixels)
        answers = []
        for row, (req, f, a) in enumerate(zip(requests, features, aux)):
            stream = (lambda _, token, row=row: on_token(row, token)) if on_token else None
            answers += self.backbone.generate([f], [a], [req.question], self.decoding(req.decoding),
                                              template=req.template, on_token=stream, timer=timer)
        timer.ms["decode_per_token"] = timer.ms["decode"] / sum(max(1, len(ans.tokens) - 1) for ans in answers)
        total = (time.perf_counter() - t0) * 1e3
        return [Result(req.id, ans.answer, ans.tokens, r.to_json() if r is not None else {},
                       self.family.display_text(a), {**timer.ms, "total": total}, ans.kv_cache_bytes,
                       ans.prompt_tokens, timer.spans)
                for req, r, a, ans in zip(requests, results, aux, answers)]

    def see(self, pixels: list[np.ndarray], wanted: list[bool], timer: Timer) -> list:
        """The experts' results of the images that want them (None for the others)."""
        results = [None] * len(pixels)
        todo = [i for i, w in enumerate(wanted) if w] if self.experts is not None else []
        if todo:
            with timer("experts"):
                found = self.experts.run([pixels[i] for i in todo], timer=timer)
            for i, r in zip(todo, found):
                results[i] = r
        return results

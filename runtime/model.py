"""The torch-free backbone runtime: one engine package in, answers out.

`Model.ask(image, question)` runs preprocessing, the vision tower, the family's extra path
(CoLLaVO crayon features, MoAI compressed aux tokens), prefill and decoding. The expert-derived
inputs arrive as `AuxInputs`; left out, they take the reference's "nothing detected" values.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from moai_edge.engines.cuda_streams import CudaStreams
from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.ort_engine import OrtEngine, OrtOptions
from moai_edge.engines.shared_weights import SharedWeights

from .decoder import DecoderRunner
from .experts.verbalize import EMPTY_VERBALIZATION, collavo_question
from .generation import DecodingConfig, generate
from .images import normalize_unit, preprocess_batch
from .inputs import PrefillRequest, assemble_prefill
from .limits import check_generation, check_threads
from .prompts import build_prompt, cut_answer
from .tokenizer import Tokenizer

BACKBONE_GRAPHS = ("vision", "crayon", "compressor", "prefill", "decode")  # the experts load their own


@dataclass
class RuntimeOptions:
    """Overrides of the manifest's defaults for this process; the package is never rewritten."""

    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 0  # intra-op threads per session; 0 = onnxruntime's default
    verify_hashes: bool = True
    check_inputs: bool = True


@dataclass
class AuxInputs:
    """What the experts contribute. CoLLaVO: crayon maps on the vision grid and the segment text
    ("(#1 person) [0.11, 0.20, 0.46, 0.97], ..."). MoAI: the verbalized expert text and the panoptic
    colour map (S,S,3) with values in 0..1. None means the reference's empty case."""

    class_map: np.ndarray | None = None
    number_map: np.ndarray | None = None
    segment_text: str | None = None
    verbalized: str | None = None
    colour_map: np.ndarray | None = None


@dataclass
class Answer:
    answer: str
    tokens: list[int]
    text: str
    timings_ms: dict[str, float]
    kv_cache_bytes: int = 0  # the batch's KV cache, allocated once for prompt + max_new_tokens


class Timer:
    """Accumulates wall-clock milliseconds per named stage, and keeps each span (stage, start, end) in
    `time.perf_counter` seconds so that a memory sampler can attribute its samples to stages."""

    def __init__(self):
        self.ms: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            self.ms[stage] = self.ms.get(stage, 0.0) + (t1 - t0) * 1e3
            self.spans.append((stage, t0, t1))


class Model:
    def __init__(self, manifest: Manifest, options: RuntimeOptions, *, streams: CudaStreams | None = None):
        """`streams`: on a GPU, each graph's session runs on its own CUDA stream (the vision tower beside the experts)."""
        check_threads(options.threads)
        self.manifest, self.options = manifest, options
        self.dims = manifest.model
        ort = OrtOptions(providers=list(options.providers), intra_op_threads=options.threads,
                         check_inputs=options.check_inputs)
        self.shared = {k: SharedWeights.open(manifest.root, spec) for k, spec in manifest.shared_weights.items()}
        self.engines: dict[str, OrtEngine] = {}
        for name in BACKBONE_GRAPHS:
            comp = manifest.components.get(name)
            if comp is not None:
                shared = self.shared.get(comp.shared_weights) if comp.shared_weights else None
                opts = replace(ort, providers=streams.providers_for(name, ort.providers)) if streams else ort
                self.engines[name] = OrtEngine.load(manifest.path(comp.file), options=opts, shared=shared, name=name)
        self.embed_table = manifest.load_array("embedding", mmap=True)
        self.tokenizer = Tokenizer.load(manifest.path(manifest.tokenizer["file"]), image_token=manifest.prompts.image_token)
        if self.tokenizer.image_token_id != self.dims.image_token_id:
            raise InputError(f"tokenizer gives '<image>' id {self.tokenizer.image_token_id}, the manifest expects {self.dims.image_token_id}")

    @classmethod
    def load(cls, engine_dir: str | Path, *, options: RuntimeOptions | None = None) -> "Model":
        options = options or RuntimeOptions()
        return cls(Manifest.load(engine_dir, verify=options.verify_hashes), options)

    def close(self) -> None:
        for e in self.engines.values():
            e.close()
        self.engines.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- public API ----------------------------------------------------------------
    def decoding(self, decoding: DecodingConfig | str | None, max_new_tokens: int | None, seed: int | None) -> DecodingConfig:
        g = self.manifest.generation
        base = DecodingConfig(strategy=g.decoding, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                              top_p=g.top_p, top_k=g.top_k, num_beams=g.num_beams, length_penalty=g.length_penalty,
                              eos_token_ids=tuple(g.eos_token_ids), pad_token_id=self.dims.pad_id)
        if isinstance(decoding, DecodingConfig):
            base = decoding
        elif decoding is not None:
            base = replace(base, strategy=decoding)
        if max_new_tokens is not None:
            base = replace(base, max_new_tokens=max_new_tokens)
        if seed is not None:
            base = replace(base, seed=seed)
        base.validate()
        return base

    def ask(self, image, question: str, *, aux: AuxInputs | None = None, **kw) -> Answer:
        return self.ask_batch([image], [question], aux=[aux], **kw)[0]

    def ask_batch(self, images: list, questions: list[str], *, aux: list[AuxInputs | None] | None = None,
                  decoding: DecodingConfig | str | None = None, max_new_tokens: int | None = None,
                  seed: int | None = None, template: str | None = None,
                  on_token: Callable[[int, int], None] | None = None,
                  image_features: np.ndarray | None = None, timer: Timer | None = None) -> list[Answer]:
        """`image_features` (from `encode_images`, e.g. computed while the experts ran) skips the vision tower on the images."""
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions: expected one question per image")
        aux = aux or [None] * len(images)
        aux = [a or AuxInputs() for a in aux]
        cfg = self.decoding(decoding, max_new_tokens, seed)
        check_generation(self.dims, max_new_tokens=cfg.max_new_tokens,
                         rows=len(images) * (cfg.num_beams if cfg.strategy == "beam" else 1))
        timer = timer or Timer()
        if image_features is None:
            image_features = self.encode_images(images, timer)
        requests = self.prepare(image_features, questions, aux, template, timer)
        runner = DecoderRunner(prefill=self.engines["prefill"], decode=self.engines["decode"],
                               embed_table=self.embed_table, dims=self.dims)
        with timer("prefill"):
            feeds = assemble_prefill(requests, self.embed_table, max_context=self.dims.max_context)
            first = runner.prefill(feeds, max_new_tokens=cfg.max_new_tokens)
        with timer("decode"):
            rows = generate(first, runner.step, runner.select_rows, cfg, on_token=on_token)
        n_tokens = max(1, max(len(r) for r in rows) - 1)
        timer.ms["decode_per_token"] = timer.ms["decode"] / n_tokens
        answers = []
        for ids in rows:
            text = self.tokenizer.decode(ids)
            answers.append(Answer(answer=cut_answer(text, self.manifest.prompts), tokens=list(map(int, ids)),
                                  text=text, timings_ms=dict(timer.ms), kv_cache_bytes=runner.cache.nbytes()))
        return answers

    # ---- the steps before prefill ------------------------------------------------------
    def encode_images(self, images, timer: Timer | None = None) -> np.ndarray:
        """Preprocessing + vision tower: (B, grid*grid, hidden). Needs nothing from the experts."""
        timer = timer or Timer()
        with timer("preprocess"):
            pixels, errors = preprocess_batch(images, self.manifest.preprocess)
            bad = [e for e in errors if e is not None]
            if bad:
                raise bad[0]
        with timer("vision"):
            return self.engines["vision"].run({"pixel_values": pixels})["image_features"]

    def prepare(self, image_features: np.ndarray, questions, aux: list[AuxInputs], template, timer: Timer) -> list[PrefillRequest]:
        if self.dims.family == "moai":
            with timer("preprocess"):
                maps = np.stack([self.colour_map_pixels(a) for a in aux])
            with timer("vision"):  # MoAI runs its colour maps through the same tower
                map_features = self.engines["vision"].run({"pixel_values": maps})["image_features"]
            with timer("aux"):
                extra = [dict(aux_tokens=self.compress(a, m)) for a, m in zip(aux, map_features)]
        else:
            with timer("aux"):
                seg = self.crayon_features(aux)
                extra = [dict(seg_features=s) for s in seg]
                questions = [collavo_question(a.segment_text, q) for a, q in zip(aux, questions)]
        with timer("tokenize"):
            prompts = [build_prompt(q, self.tokenizer, self.manifest.prompts, template=template) for q in questions]
        return [PrefillRequest(input_ids=p.input_ids, image_pos=p.image_pos, image_features=f, **e)
                for p, f, e in zip(prompts, image_features, extra)]

    def colour_map_pixels(self, a: AuxInputs) -> np.ndarray:
        s = self.manifest.preprocess.image_size
        cmap = np.zeros((s, s, 3), np.float32) if a.colour_map is None else np.asarray(a.colour_map, np.float32)
        if cmap.shape != (s, s, 3):
            raise InputError(f"colour_map must have shape ({s}, {s}, 3), found {cmap.shape}")
        cmap = cmap.astype(np.float16).astype(np.float32)  # the reference feeds it as fp16
        return normalize_unit(cmap, self.manifest.preprocess)

    def compress(self, a: AuxInputs, map_features: np.ndarray) -> np.ndarray:
        """Verbalized text (tokenized with BOS, embedded) ++ colour-map tokens -> compressor, one image at a time
        (the compressor has no padding mask, so batching unequal texts would change the result)."""
        text = a.verbalized if a.verbalized is not None else EMPTY_VERBALIZATION
        ids = np.asarray(self.tokenizer.encode(text, add_bos=True), np.int64)
        aux_inputs = np.concatenate([self.embed_table[ids], map_features])[None].astype(np.float32)
        return self.engines["compressor"].run({"aux_inputs": aux_inputs})["aux_tokens"][0]

    def crayon_features(self, aux: list[AuxInputs]) -> np.ndarray:
        g = self.dims.grid
        cls, num = [], []
        for a in aux:
            c = np.zeros((g, g), np.int64) if a.class_map is None else np.asarray(a.class_map, np.int64)
            n = np.zeros((g, g), np.int64) if a.number_map is None else np.asarray(a.number_map, np.int64)
            if c.shape != (g, g) or n.shape != (g, g):
                raise InputError(f"crayon maps must be ({g}, {g}), found class {c.shape} and number {n.shape}")
            if c.min() < 0 or c.max() >= self.dims.num_seg_classes or n.min() < 0 or n.max() >= self.dims.num_seg_numbers:
                raise InputError(f"crayon map values out of range: class ids must be in [0, {self.dims.num_seg_classes}), "
                                 f"numbers in [0, {self.dims.num_seg_numbers}); found class {c.min()}..{c.max()}, number {n.min()}..{n.max()}")
            cls.append(c.reshape(-1))
            num.append(n.reshape(-1))
        return self.engines["crayon"].run({"class_map": np.stack(cls), "number_map": np.stack(num)})["seg_features"]

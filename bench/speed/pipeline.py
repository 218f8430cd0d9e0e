"""`moai-edge bench`: the whole pipeline stage by stage, per batch size, with memory, the roofline and,
optionally, the PyTorch reference side by side.

Every run decodes exactly `max_new_tokens` (end-of-sequence ignored) so runs are comparable. The
runtime is measured first, in a process that has not imported torch, so its memory figures are its
own; `--reference` then loads the PyTorch reference on the same weights and times both again
interleaved (A B A B) at batch 1, so machine noise hits both.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.manifest import Manifest, load_manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime import Pipeline, Request, Result, load_image, sample_image

from .footprint import footprint
from ..machine import machine_info
from ..tegrastats import Tegrastats
from .memory import RssSampler, gpu_memory, jetson_memory, rss_mb
from .roofline import batching, kv_bytes_per_token, read_bandwidth_gbs, roofline

# stage -> the timings_ms keys it sums (Pipeline and reference report the same keys)
STAGES = {
    "preprocessing": ("load", "tokenize"),
    "expert_panoptic": ("expert_panoptic",), "expert_detector": ("expert_detector",),
    "expert_scene_graph": ("expert_scene_graph",), "expert_ocr": ("expert_ocr",),
    "experts": ("experts",),
    "verbalize": ("verbalize",),
    "vision": ("vision",),
    "aux": ("aux",),  # MoAI: the compressor; CoLLaVO: the crayon embeddings
    "prefill": ("prefill",),
    "decode_per_token": ("decode_per_token",),
    "total": ("total",),
}


@dataclass
class BenchConfig:
    engine_dir: Path
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    warmup: int = 1
    runs: int = 5
    reference: bool = False
    # threads per engine; concurrent=False: experts and vision one after another, every engine with `threads`
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    max_new_tokens: int = 32
    question: str = "Describe this image in detail."
    images: list[str] = field(default_factory=list)  # none: generated sample images


def summarize(values: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(np.mean(values)), "n": len(values)}


def stage_values(timings: dict[str, float]) -> dict[str, float]:
    out = {s: sum(timings[k] for k in keys if k in timings) for s, keys in STAGES.items()
           if any(k in timings for k in keys)}
    out["time_to_first_token"] = timings["total"] - timings.get("decode", 0.0)
    return out


def bench_images(cfg: BenchConfig) -> list[np.ndarray]:
    if cfg.images:
        return [load_image(p) for p in cfg.images]
    return [sample_image(size=s, seed=i) for i, s in enumerate((640, 480, 560, 720))]


def package_bytes(manifest: Manifest) -> int:
    """Every weight file the pipeline loads: the graphs, their external weights, the embedding, the queries."""
    files = {manifest.path(f) for name in manifest.components for f in manifest.component_files(name)}
    return sum(f.stat().st_size for f in files if f.is_file())


class PipelineBench:
    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.manifest = load_manifest(cfg.engine_dir, verify_hashes=cfg.options.verify_hashes)
        self.images = bench_images(cfg)

    def decoding(self, pipe: Pipeline) -> DecodingConfig:
        return pipe.decoding("greedy", max_new_tokens=self.cfg.max_new_tokens).replace(eos_token_ids=())

    def run(self) -> dict:
        cfg = self.cfg
        report = {"config": {"batch_sizes": list(cfg.batch_sizes), "warmup": cfg.warmup, "runs": cfg.runs,
                             "concurrent": cfg.options.concurrent,
                             "max_new_tokens": cfg.max_new_tokens, "question": cfg.question,
                             "images": cfg.images or [f"generated {img.shape[1]}x{img.shape[0]}"
                                                      for img in self.images]},
                  "machine": machine_info(threads=cfg.options.threads, engine_dir=cfg.engine_dir)}
        weights = package_bytes(self.manifest)
        base = rss_mb()
        with ExitStack() as stack:
            with RssSampler() as sampler, Tegrastats() as tegra:
                pipe = stack.enter_context(Pipeline.load(cfg.engine_dir, cfg.options))
                loaded = max(mb for _, mb in sampler.samples)
                report["batches"] = {str(b): self.bench_batch(pipe, b, sampler) for b in cfg.batch_sizes}
            stage_alone = dict(pipe.schedule.peaks_mb)  # measured when a --memory-budget ran the stages one by one
            if cfg.reference:  # after the memory figures: torch is imported from here on
                report["reference"], report["reference_differences"] = self.side_by_side(pipe)
        report["tegrastats"] = tegra.summary()
        report["memory"] = {"weights_mb": weights / 2**20, "rss_before_load_mb": base, "rss_after_load_mb": loaded,
                            "stage_alone_peak_mb": stage_alone,
                            "peak_rss_mb": sampler.peak_mb(), "gpu": gpu_memory(), "jetson": jetson_memory(),
                            "timeline": [(round(t - sampler.samples[0][0], 3), round(mb, 1))
                                         for t, mb in sampler.samples[::10]]}
        for b, entry in report["batches"].items():
            entry["peak_rss_vs_weights_plus_kv"] = entry["peak_rss_mb"] / (weights / 2**20 + entry["kv_cache_mb"])
            # what the package holds once an answer is done, above the process before loading it
            entry["rss_after_answer_vs_weights"] = (entry["rss_after_answer_mb"] - base) / (weights / 2**20)
            if stage_alone:  # the bound the issue sets: weights + KV + the largest stage's own peak, measured alone
                bound = weights / 2**20 + entry["kv_cache_mb"] + max(stage_alone.values())
                entry["peak_rss_vs_weights_kv_largest_stage"] = (entry["peak_rss_mb"] - base) / bound
        one = report["batches"].get("1") or next(iter(report["batches"].values()))
        cache_len = one["kv_cache_mb"] * 2**20 / one["batch"] / kv_bytes_per_token(self.manifest, context=1)
        context = int(cache_len - cfg.max_new_tokens / 2)  # the mean length of the cache while decoding
        report["footprint"] = footprint(self.manifest.family)
        bandwidth = read_bandwidth_gbs(threads=cfg.options.threads)
        report["roofline"] = roofline(self.manifest, tokens_per_s=one["decode_tokens_per_s"] / one["batch"],
                                      context=context, bandwidth_gbs=bandwidth)
        b1, bmax = report["batches"].get("1"), report["batches"][str(max(cfg.batch_sizes))]
        if b1 and bmax is not b1:
            report["batching_speedup"] = bmax["images_per_s"] / b1["images_per_s"]
            report["roofline"]["batching"] = batching(
                self.manifest, tokens_per_s={e["batch"]: e["decode_tokens_per_s"] for e in report["batches"].values()},
                context=context, bandwidth_gbs=bandwidth)
        return report

    def bench_batch(self, pipe: Pipeline, batch: int, sampler: RssSampler) -> dict:
        images = [self.images[i % len(self.images)] for i in range(batch)]
        decoding = self.decoding(pipe)

        def once() -> Result:
            return pipe.ask_batch(images, [self.cfg.question] * batch, decoding=decoding)[0]

        for _ in range(self.cfg.warmup):
            once()
        results, stage_peaks = [], {}
        for _ in range(self.cfg.runs):
            r = once()
            results.append(r)
            for stage, start, end in r.spans:
                peak = sampler.peak_mb(start, end)
                if peak is not None:
                    stage_peaks[stage] = max(stage_peaks.get(stage, 0.0), peak)
        runs = [stage_values(r.timings_ms) for r in results]
        stages = {s: summarize([v[s] for v in runs]) for s in runs[0]}
        steps = len(results[0].tokens) - 1  # the first token comes from prefill
        decode_s = float(np.median([r.timings_ms["decode"] for r in results])) / 1e3
        start, end = results[0].spans[0][1], results[-1].spans[-1][2]
        return {"batch": batch, "stages_ms": stages, "images_per_s": batch / (stages["total"]["p50"] / 1e3),
                "decode_tokens_per_s": batch * steps / decode_s if decode_s > 0 else float("nan"),
                "kv_cache_mb": results[0].kv_cache_bytes / 2**20, "peak_rss_mb": sampler.peak_mb(start, end),
                "stage_peak_rss_mb": stage_peaks, "rss_after_answer_mb": rss_mb()}

    def side_by_side(self, pipe: Pipeline) -> tuple[dict, list[str]]:
        """Batch 1, runtime and PyTorch reference interleaved; ratios are reference / runtime per run pair. Also the
        differences bench.compare finds between the two sides' answers of the first timed pair."""
        from ..compare.results import compare_results
        from ..reference.pipeline import ReferencePipeline

        with ReferencePipeline.load(self.cfg.engine_dir, self.cfg.options) as ref:
            request = [Request(self.images[0], self.cfg.question, self.decoding(pipe))]
            for _ in range(self.cfg.warmup):
                pipe.run(request), ref.run(request)
            runs = [(pipe.run(request), ref.run(request)) for _ in range(self.cfg.runs)]
        differences = compare_results(*runs[0])
        pairs = [(stage_values(ours[0].timings_ms), stage_values(theirs[0].timings_ms)) for ours, theirs in runs]
        # loading and verbalization run the same runtime code on both sides (the reference's own resize and
        # normalisation are inside its vision stage), so they and preprocessing are not compared
        stages = [s for s in pairs[0][0] if s in pairs[0][1] and s not in ("preprocessing", "verbalize")]
        out = {}
        for s in stages:
            a, b = [p[0][s] for p in pairs], [p[1][s] for p in pairs]
            ratios = [y / x for x, y in zip(a, b) if x > 0]
            out[s] = {"runtime_ms": summarize(a), "reference_ms": summarize(b),
                      "speedup": float(np.median(ratios)) if ratios else None,
                      "speedup_min": min(ratios, default=None), "speedup_max": max(ratios, default=None)}
        return out, differences


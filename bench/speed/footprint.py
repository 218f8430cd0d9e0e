"""What the real CoLLaVO-7B and MoAI-7B take in memory at each precision preset, computed from their dimensions.

    python -m moai_edge.bench.speed.footprint [--family moai|collavo]

Weights: parameter counts from the architectures (export.config's defaults are the published sizes; the experts'
counts are those of their published configurations, checked against the PyTorch models by the tests), times the
bytes a preset stores per parameter. A weight-only int8/int4 matmul stores its bits plus a float32 scale per
block of 32; "int8 dynamic" (tower, experts) stores matmul weights as int8 and everything else (convolutions,
norms, embeddings) as float32. The PLoRA, seg and mixer branches and the small graphs follow export.precision.

KV cache: every layer's K and V, float32 (the runtime's cache takes the decode graph's IO dtype), for the
reference's prompt (1316 tokens: 1225 image tokens and the text around them) plus 128 new tokens, batch 1. How much
batch 8 can raise decode tokens/s over batch 1 where reading memory bounds both (bench.roofline): a step reads the
base weights once and each row's cache.

Activation peaks, per stage run alone: the largest float32 tensors one step of that stage holds at once (an
estimate from the dimensions, not a measurement): attention scores and probabilities where attention is over
the whole sequence (eager, as the exported graphs compute it), the MLP's widest intermediate, the expert's
widest feature map. A pipeline runs stages one after another (the experts may overlap: see --sequential), so
the peak of an answer is the weights, the KV cache and the largest stage's activations.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from moai_edge.export.config import CompressorConfig, CrayonConfig, DecoderConfig, VisionConfig, default_mixer_layers
from moai_edge.export.precision import PRECISION_PRESETS, PrecisionPreset
from moai_edge.runtime import family_of

from .roofline import memory_bound_gain

GB = 1e9
SCALE_BLOCK = 32
PROMPT_TOKENS = 1316  # the reference's prompt: 1225 image tokens and ~91 text tokens
NEW_TOKENS = 128  # the reference's benchmark setting
BATCH = 8  # the batch whose decode gain over batch 1 the table bounds (bench.roofline)
DEVICES = {"Jetson Orin Nano 8 GB": 8, "Jetson Orin NX 16 GB": 16, "Jetson AGX Orin 64 GB": 64, "RTX 4090 24 GB": 24}


def bytes_per_weight(kind: str) -> float:
    """A matmul weight at `kind` (weight-only blocks for int8 / int4)."""
    return {"fp32": 4.0, "fp16": 2.0, "int8": 1.0 + 4 / SCALE_BLOCK, "int4": 0.5 + 4 / SCALE_BLOCK}[kind]


@dataclass(frozen=True)
class Part:
    """Parameters of one part: `matmul` (what a preset quantizes) and `other` (kept float unless fp16)."""

    name: str
    group: str  # a role of export.precision ("decoder", "head", "tower", "small", "embedding") or "branches"
    matmul: int
    other: int = 0

    def nbytes(self, kind: str) -> float:
        other = 2.0 if kind == "fp16" else 4.0
        if self.group == "tower" and kind in ("int8", "int8-qdq"):  # matmul weights int8 with per-channel scales
            # (QDQ quantizes convolutions too; they are counted float32 here, an upper bound)
            return self.matmul * 1.0 + self.other * other
        return self.matmul * bytes_per_weight(kind) + self.other * other


def linear_shapes(d: DecoderConfig) -> list[tuple[int, int]]:
    """(in, out) of wqkv, wo, w1, w3, w2."""
    qkv = (d.num_heads + 2 * d.num_kv_heads) * d.head_dim
    return [(d.hidden_size, qkv), (d.num_heads * d.head_dim, d.hidden_size), (d.hidden_size, d.intermediate_size),
            (d.hidden_size, d.intermediate_size), (d.intermediate_size, d.hidden_size)]


def decoder_parts(d: DecoderConfig) -> list[Part]:
    shapes = linear_shapes(d)
    base = d.num_layers * sum(i * o for i, o in shapes)
    norms = d.num_layers * 2 * d.hidden_size + d.hidden_size
    plora = d.num_layers * sum((i + o) * d.plora_rank for i, o in shapes)
    seg = d.num_layers * sum((i + o) * d.plora_rank for i, o in shapes[:4]) if d.seg_branch else 0  # not w2
    mixer = len(d.mixer_layers) * (6 * 4 * 2 * d.hidden_size * d.mixer_rank + 2 * d.hidden_size * 3)  # + two gates
    return [Part("decoder base weights", "decoder", base, norms),
            Part("output head", "head", d.vocab_size * d.hidden_size),
            Part("PLoRA / seg / mixer branches", "branches", plora + seg + mixer, len(d.mixer_layers) * 2 * 3),
            Part("token embedding", "embedding", 0, (d.vocab_size + 1) * d.hidden_size)]


def vision_part(v: VisionConfig, hidden: int) -> Part:
    """CLIP ViT (transformers' CLIPVisionModel) at the interpolated grid, and the projector MLP."""
    h, i = v.hidden_size, v.intermediate_size
    per_layer = 4 * h * h + 2 * h * i
    other = v.num_layers * (4 * h + i + h + 4 * h)  # biases and the two LayerNorms
    other += 3 * v.patch_size**2 * h + (v.grid**2 + 1) * h + h + 2 * 2 * h  # patch conv, positions, CLS, 2 LNs
    proj = h * hidden + hidden * hidden
    return Part("vision tower + projector", "tower", v.num_layers * per_layer + proj, other + 2 * hidden)


def compressor_part(c: CompressorConfig, dim: int) -> Part:
    inner = c.heads * c.dim_head
    per_layer = dim * inner * 4 + 2 * dim * dim * c.ff_mult  # to_q, to_kv (2x), to_out; the FF pair
    norms = c.depth * 3 * 2 * dim + 2 * dim  # norm_media, norm_latents, FF LayerNorm; the final norm
    return Part("MoAI-Compressor", "small", c.depth * per_layer, norms + c.num_latents * dim)


def crayon_part(c: CrayonConfig, v: VisionConfig, hidden: int) -> Part:
    return Part("crayon embedding + projector", "small", v.hidden_size * hidden + hidden * hidden,
                2 * hidden + (c.num_classes + c.num_numbers) * v.hidden_size)


@dataclass(frozen=True)
class Expert:
    """A published expert: parameters (matmul / other) and its activation peak (bytes, float32, batch 1)."""

    name: str
    matmul: int
    other: int
    activations: float
    ships_as: str | None = None  # precision fixed whatever the preset (PP-OCR: as shipped)

    def part(self) -> Part:
        return Part(self.name, "tower", self.matmul, self.other)


def attention_peak(heads: int, queries: int, keys: int) -> float:
    """Scores and probabilities, float32."""
    return 2 * heads * queries * keys * 4.0


# Parameter counts of the published configurations (export.experts' non-tiny configs), split into nn.Linear
# weights and the rest; tests/bench/test_footprint.py builds each model on the meta device and checks them.
# Activation peaks: OWLv2's 3601-token self-attention at 960 (12 heads); Mask2Former's stage-1 Swin features at 384
# and its 200 x 96 x 96 mask logits; PSGTR's ResNet-50 stage-1 bottleneck at 1333x800 (256 x 200 x 334, a few
# live at once); PP-OCR's detector at its 960 limit (32-channel maps at half resolution, a few live at once).
EXPERTS = {
    "mask2former-swin-base": Expert("Mask2Former Swin-B (384)", 103_499_264, 3_471_806,
                                    4 * (96 * 96 * 128 * 4 + 200 * 96 * 96) * 2),
    "mask2former-swin-large": Expert("Mask2Former Swin-L (384)", 211_633_664, 3_905_018,
                                     4 * (96 * 96 * 192 * 4 + 200 * 96 * 96) * 2),
    "owlv2-base-960": Expert("OWLv2 B/16 (960, image side, 1847 queries)", 88_085_760, 3_484_168,
                             attention_peak(12, 3601, 3601) + 3600 * 1847 * 4),
    "psgtr-r50": Expert("PSGTR ResNet-50 (1333x800)", 17_911_040, 26_526_655, 4 * 256 * 200 * 334 * 4.0 * 3),
    "pp-ocr": Expert("PP-OCR det/cls/rec (as shipped)", 0, 3_996_025, 4 * 32 * 480 * 480 * 4.0, ships_as="fp32"),
}
FAMILY_EXPERTS = {"collavo": ("mask2former-swin-large",),  # the published experts of each family (data)
                  "moai": ("mask2former-swin-base", "owlv2-base-960", "psgtr-r50", "pp-ocr")}


def real_decoder(graphs: tuple[str, ...]) -> DecoderConfig:
    """The published decoder with the branches the family's graphs feed: seg (crayon) or mixers (compressor)."""
    d = DecoderConfig()
    return DecoderConfig(seg_branch="crayon" in graphs,
                         mixer_layers=default_mixer_layers(d.num_layers) if "compressor" in graphs else ())


def small_parts(graphs: tuple[str, ...], d: DecoderConfig, v: VisionConfig) -> list[Part]:
    makers = {"compressor": lambda: compressor_part(CompressorConfig(), d.hidden_size),
              "crayon": lambda: crayon_part(CrayonConfig(), v, d.hidden_size)}
    return [makers[g]() for g in graphs]


def kind_of(part: Part, preset: PrecisionPreset) -> str:
    if part.group == "branches":  # lowered with the decoder's graphs: float16 with them, else float32
        return "fp16" if preset.rules["decoder"].kind == "fp16" else "fp32"
    return preset.rules[part.group].kind  # the other groups are the preset's roles


def stage_activations(family: str, d: DecoderConfig, v: VisionConfig) -> dict[str, float]:
    """Bytes of the largest float32 tensors one run of each stage holds at once (batch 1)."""
    tokens = v.grid**2 + 1
    length = PROMPT_TOKENS
    out = {
        "vision": (attention_peak(v.num_heads, tokens, tokens)
                   + tokens * (v.intermediate_size + 3 * v.hidden_size) * 4.0),
        "prefill": max(attention_peak(d.num_heads, length, length) + 2 * length * d.num_heads * d.head_dim * 4.0,
                       2 * length * d.intermediate_size * 4.0) + 3 * length * d.hidden_size * 4.0,
        "decode": (d.num_heads * (length + NEW_TOKENS) * 2 + d.vocab_size + 2 * d.intermediate_size) * 4.0,
    }
    for key in FAMILY_EXPERTS[family]:
        out[key] = EXPERTS[key].activations
    return out


def footprint(family: str) -> dict:
    """Per preset: weight bytes per part, KV bytes, activation peaks, the total and each device's headroom."""
    graphs = family_of(family).graphs
    d, v = real_decoder(graphs), VisionConfig()
    parts = [*decoder_parts(d), vision_part(v, d.hidden_size), *small_parts(graphs, d, v)]
    experts = [EXPERTS[k] for k in FAMILY_EXPERTS[family]]
    kv_per_token = 2 * d.num_layers * d.num_kv_heads * d.head_dim * 4.0
    kv = kv_per_token * (PROMPT_TOKENS + NEW_TOKENS)
    activations = stage_activations(family, d, v)
    peak_stage = max(activations, key=activations.get)
    rows = {}
    for name, preset in PRECISION_PRESETS.items():
        weights = {p.name: p.nbytes(kind_of(p, preset)) for p in parts}
        weights.update({e.name: e.part().nbytes(e.ships_as or preset.rules["tower"].kind) for e in experts})
        total = sum(weights.values()) + kv + activations[peak_stage]
        # decode reads the base weights once per step and each row's cache (at its mean length while decoding)
        gain = memory_bound_gain(weights["decoder base weights"] + weights["output head"],
                                 kv_per_token * (PROMPT_TOKENS + NEW_TOKENS / 2), batch=BATCH)
        rows[name] = {"weights": weights, "weights_total": sum(weights.values()), "kv_cache": kv,
                      "decode_batch_gain_ceiling": {str(BATCH): gain},
                      "largest_stage": peak_stage, "largest_stage_activations": activations[peak_stage],
                      "total": total, "free_gb": {dev: gb - total / GB for dev, gb in DEVICES.items()}}
    return {"family": family, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
            "activations": activations, "presets": rows}


def markdown(fp: dict) -> str:
    devices = list(DEVICES)
    lines = [f"Footprint of the real {fp['family']} (7B) by precision preset, GB (computed, batch 1, "
             f"{fp['prompt_tokens']}-token prompt + {fp['new_tokens']} new tokens)", "",
             "| preset | weights | KV cache | largest stage | total | " + " | ".join(f"free on {d}" for d in devices)
             + f" | batch-{BATCH} decode gain, at most |",
             "|---|---:|---:|---|---:|" + "---:|" * len(devices) + "---:|"]
    for name, r in fp["presets"].items():
        free = " | ".join(f"{r['free_gb'][d]:.1f}" for d in devices)
        lines.append(f"| {name} | {r['weights_total'] / GB:.2f} | {r['kv_cache'] / GB:.2f} | {r['largest_stage']} "
                     f"{r['largest_stage_activations'] / GB:.2f} | {r['total'] / GB:.2f} | {free} | "
                     f"{r['decode_batch_gain_ceiling'][str(BATCH)]:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m moai_edge.bench.speed.footprint", description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(FAMILY_EXPERTS), default="moai")
    print(markdown(footprint(p.parse_args(argv).family)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

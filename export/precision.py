"""Precision presets: what each component of an engine package is stored and computed in.

    moai-edge export ... --precision PRESET

    preset     decoder (prefill + decode)        vision tower, experts     compressor, crayon    embedding
    fp32       fp32                              fp32                      fp32                  fp32
    fp16       fp16                              fp16                      fp16                  fp16
    int8       int8 weight-only, fp32 head       int8 dynamic              fp32                  fp16
    int4       int4 weight-only, int8 head       int8 dynamic              fp32                  fp16
    int4-fp16  int4 weight-only                  fp16                      fp16                  fp16
    fp16-int8  fp16                              int8 static, QDQ          fp16                  fp16

Weight-only (onnxruntime's MatMulNBits) quantizes the decoder's base matmuls, the weights every token reads;
the output head keeps more bits (int4: 8-bit; int8: float32). The PLoRA, seg and mixer branches (prefill only,
a small share of the bytes) stay float32, so what makes these models differ from a plain LLM keeps its
precision. The head, measured on the trained world MoAI against float32 (decoder KL on 30 world questions):
- at 8 bits it was 90% of the int8 decoder's KL (1.1e-4; 1.2e-5 with a float32 head) and shifted every
  answer's logits alike, costing 2.4 points of count answers (17 questions lost, 5 gained: McNemar p = 0.017;
  with a float32 head 3 and 1, p = 0.63);
- at 4 bits it was 80% of the int4 decoder's KL (0.0078; 0.0016 with an 8-bit head, token agreement 92.8% ->
  94.3%; CoLLaVO 0.0081 -> 0.0011, 89.8% -> 95.7%). An 8-bit head adds 0.19 GB to MoAI-7B's int4 weights (a
  float32 one would add 1.3 GB). "int8 dynamic"
(onnxruntime's quantize_dynamic) quantizes the matmul weights of the vision tower and the experts per
channel, activations per call. Convolutions keep float32: onnxruntime's int8 Conv is slower on CPU than
its float one. The PP-OCR graphs are kept as shipped. fp16 graphs keep float32 inputs and outputs, so the
runtime's feeds and KV cache do not change; they are for GPUs (on a CPU onnxruntime computes them through
casts, slowly, which serves to measure their accuracy).

int4 and int8 are CPU presets (onnxruntime's MatMulNBits and integer matmuls); int4-fp16 is the GPU mix.
fp16-int8 is for TensorRT: its tower and experts carry QuantizeLinear/DequantizeLinear pairs around their
convolutions and matmuls (symmetric, weights per channel), with activation ranges calibrated on training-split
world images (export.calibration) — the explicit quantization TensorRT builds int8 engines from.
"""

from __future__ import annotations

from dataclasses import dataclass

from moai_edge.engines.errors import InputError

KINDS = ("fp32", "fp16", "int8", "int8-qdq", "int4")


@dataclass(frozen=True)
class WeightOnly:
    """MatMulNBits settings: block 32, symmetric, accuracy level 4 (int8 compute on CPU). Chosen by measurement
    (trained world MoAI, int4 decoder against float32 on 52 world questions; small MoAI decode step, 1316-token
    past, batch 1, interleaved): block 32 symmetric 92.5% token agreement, KL 0.0076, 27.6 ms; block 128
    83.1%, KL 0.0168, 26.5 ms; block 32 asymmetric 84.0%, KL 0.0102; block 16 85.9%, KL 0.0118.
    Accuracy level 4 against 1 (float32 compute), one 1024x16384 int4 weight, 2 threads, interleaved: 2.15x
    faster at 1 row, 2.67x at 8 rows, 1.62x at 1341; but onnxruntime's CPU kernel then holds 1.40x the int4
    weight bytes in memory (8-bit: 1.22x), where level 1 holds 1.00x."""

    bits: int
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    head_bits: int | None = None  # the output head's bits; None: it keeps float32


@dataclass(frozen=True)
class Preset:
    name: str
    decoder: str  # one of KINDS
    tower: str  # vision tower and experts
    small: str  # the compressor and crayon graphs
    embedding: str  # the token table: fp32 or fp16

    def of(self, component: str) -> str:
        """The precision of a package component (the PP-OCR graphs and arrays other than the embedding: fp32)."""
        if component in DECODER:
            return self.decoder
        if component in TOWER:
            return self.tower
        if component in SMALL:
            return self.small
        if component == "embedding":
            return self.embedding
        return "fp32"

    def weight_only(self) -> WeightOnly | None:
        return {"int4": WeightOnly(4, head_bits=8), "int8": WeightOnly(8)}.get(self.decoder)


DECODER = ("prefill", "decode")  # the graphs holding the decoder weights (export.package.SHARED)
TOWER = ("vision", "panoptic", "detector", "scene_graph", "scene_graph_masks")
SMALL = ("compressor", "crayon")

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("fp32", decoder="fp32", tower="fp32", small="fp32", embedding="fp32"),
    Preset("fp16", decoder="fp16", tower="fp16", small="fp16", embedding="fp16"),
    Preset("int8", decoder="int8", tower="int8", small="fp32", embedding="fp16"),
    Preset("int4", decoder="int4", tower="int8", small="fp32", embedding="fp16"),
    Preset("int4-fp16", decoder="int4", tower="fp16", small="fp16", embedding="fp16"),
    Preset("fp16-int8", decoder="fp16", tower="int8-qdq", small="fp16", embedding="fp16"),
)}


def precision_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"--precision: expected one of {', '.join(PRESETS)}, found {name!r}")
    return PRESETS[name]

"""The graphs an engine package holds, as torch modules with named inputs and outputs.

Each target is registered by name with `@graph(...)`; a family (export.families) names the ones it
exports and `targets_for(family)` lists them.
The prefill graph returns its keys and values sequence-major, (seq, batch, kv_heads, head_dim); the decode graph
(export.gqa_decode) reads and writes the runtime's KV buffers (batch, kv_heads, max_len, head_dim) in place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from moai_edge.engines.errors import InputError

from .families import family_of
from .modeling.vlm import VLM


@dataclass(frozen=True)
class GraphTarget:
    name: str
    build: Callable[[VLM], nn.Module]
    inputs: Callable[[VLM, int], dict[str, torch.Tensor]]  # example inputs for a batch size
    dynamic_axes: Callable[[VLM], dict[str, dict[int, str]]]
    output_names: Callable[[VLM], list[str]]
    # a graph written directly in ONNX (from the model and the IO dtype) rather than traced; `build` is then its
    # PyTorch twin, used only to validate it
    onnx_graph: Callable[[VLM, str], object] | None = None
    io_dtype: str = "float32"


TARGETS: dict[str, GraphTarget] = {}


def graph(name: str, *, inputs, dynamic_axes, outputs, onnx_graph=None):
    def register(build):
        TARGETS[name] = GraphTarget(name, build, inputs, dynamic_axes, outputs, onnx_graph)
        return build

    return register


def targets_for(family: str) -> list[GraphTarget]:
    return [TARGETS[name] for name in family_of(family).graphs]


def kv_names(model: VLM, prefix: str = "") -> list[str]:
    return [f"{prefix}{kind}.{i}" for i in range(model.cfg.decoder.num_layers) for kind in ("key", "value")]


def to_seq_major(kv):
    return [t.permute(2, 0, 1, 3) for pair in kv for t in pair]  # (B,kv,S,hd) -> (S,B,kv,hd)


# ---- vision ------------------------------------------------------------------------------
class VisionGraph(nn.Module):
    def __init__(self, m: VLM):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m.encode_image(pixel_values)


@graph("vision",
       inputs=lambda m, b: {"pixel_values": torch.randn(b, 3, m.cfg.vision.image_size, m.cfg.vision.image_size)},
       dynamic_axes=lambda m: {"pixel_values": {0: "batch"}, "image_features": {0: "batch"}},
       outputs=lambda m: ["image_features"])
def build_vision(m: VLM) -> nn.Module:
    return VisionGraph(m)


# ---- CoLLaVO crayon embedding ---------------------------------------------------------------
class CrayonGraph(nn.Module):
    def __init__(self, m: VLM):
        super().__init__()
        self.m = m

    def forward(self, class_map, number_map):
        return self.m.crayon_features(class_map, number_map)


def _crayon_inputs(m: VLM, b: int):
    n, c = m.cfg.vision.num_patches, m.cfg.crayon
    return {"class_map": torch.randint(0, c.num_classes, (b, n)), "number_map": torch.randint(0, c.num_numbers, (b, n))}


@graph("crayon", inputs=_crayon_inputs,
       dynamic_axes=lambda m: {"class_map": {0: "batch"}, "number_map": {0: "batch"}, "seg_features": {0: "batch"}},
       outputs=lambda m: ["seg_features"])
def build_crayon(m: VLM) -> nn.Module:
    return CrayonGraph(m)


# ---- MoAI compressor ------------------------------------------------------------------------
class CompressorGraph(nn.Module):
    def __init__(self, m: VLM):
        super().__init__()
        self.m = m

    def forward(self, aux_inputs):
        return self.m.compress(aux_inputs)


@graph("compressor",
       inputs=lambda m, b: {"aux_inputs": torch.randn(b, m.cfg.vision.num_patches + 7, m.cfg.decoder.hidden_size)},
       dynamic_axes=lambda m: {"aux_inputs": {0: "batch", 1: "aux_len"}, "aux_tokens": {0: "batch"}},
       outputs=lambda m: ["aux_tokens"])
def build_compressor(m: VLM) -> nn.Module:
    return CompressorGraph(m)


# ---- prefill ---------------------------------------------------------------------------------
class PrefillGraph(nn.Module):
    def __init__(self, m: VLM):
        super().__init__()
        self.m = m
        self.family_input = family_of(m.cfg.family).prefill_input

    def forward(self, inputs_embeds, attention_mask, position_ids, im_mask, family_input):
        """family_input: the family's prefill input, e.g. CoLLaVO's seg_features (B,L,H) or MoAI's aux_tokens
        (B,A,H)."""
        logits, kv = self.m.prefill(inputs_embeds, attention_mask, position_ids, im_mask,
                                    **{self.family_input: family_input})
        return (logits, *to_seq_major(kv))


def _prefill_inputs(m: VLM, b: int):
    h, n = m.cfg.decoder.hidden_size, m.cfg.vision.num_patches
    seq = n + 12
    mask = torch.ones(b, seq, dtype=torch.int64)
    mask[1:, seq - 3:] = 0  # right padding on the other rows
    im = torch.zeros(b, seq, dtype=torch.bool)
    im[:, 5:5 + n] = True
    feeds = {"inputs_embeds": torch.randn(b, seq, h), "attention_mask": mask,
             "position_ids": torch.arange(seq).expand(b, seq).contiguous(), "im_mask": im}
    family = family_of(m.cfg.family)
    feeds[family.prefill_input] = family.prefill_example(m.cfg, im)
    return feeds


def _prefill_axes(m: VLM):
    family = family_of(m.cfg.family)
    axes = {k: {0: "batch", 1: "seq"} for k in ("inputs_embeds", "attention_mask", "position_ids", "im_mask")}
    axes[family.prefill_input] = dict(family.prefill_input_axes)
    axes["logits"] = {0: "batch"}
    axes.update({k: {0: "seq", 1: "batch"} for k in kv_names(m)})
    return axes


@graph("prefill", inputs=_prefill_inputs, dynamic_axes=_prefill_axes,
       outputs=lambda m: ["logits", *kv_names(m)])
def build_prefill(m: VLM) -> nn.Module:
    return PrefillGraph(m)


# ---- decode ----------------------------------------------------------------------------------
class DecodeGraph(nn.Module):
    """The PyTorch twin of export.gqa_decode's graph, for validation: one token per row over KV buffers
    (B, kv_heads, M, head_dim) whose first seqlens_k[row] slots hold the row's past; the new key and value go to
    slot seqlens_k[row], which is also the token's RoPE position."""

    def __init__(self, m: VLM):
        super().__init__()
        self.m = m

    def forward(self, inputs_embeds, seqlens_k, total_sequence_length, *past):
        lengths = seqlens_k.long()
        slots = torch.arange(past[0].shape[2])
        mask = torch.cat([(slots[None] < lengths[:, None]).long(), torch.ones(len(lengths), 1, dtype=torch.long)], 1)
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, kv = self.m.decode_step(inputs_embeds, mask, lengths[:, None], pairs)
        at = (slots[None] == lengths[:, None])[:, None, :, None]  # (B,1,M,1): the slot each row writes
        return (logits, *(torch.where(at, new, old) for pair, new_pair in zip(pairs, kv)
                          for old, new in zip(pair, new_pair)))


def _decode_inputs(m: VLM, b: int):
    d = m.cfg.decoder
    max_len = 12
    lengths = torch.tensor([9 - 2 * (r % 3) for r in range(b)], dtype=torch.int32)  # rows of different lengths
    feeds = {"inputs_embeds": torch.randn(b, 1, d.hidden_size), "seqlens_k": lengths,
             "total_sequence_length": lengths.max() + 1}
    for name in kv_names(m, "past_"):
        feeds[name] = torch.randn(b, d.num_kv_heads, max_len, d.head_dim)
    return feeds


def _decode_axes(m: VLM):
    axes = {"inputs_embeds": {0: "batch"}, "seqlens_k": {0: "batch"}, "logits": {0: "batch"}}
    axes.update({k: {0: "batch", 2: "max_len"} for k in (*kv_names(m, "past_"), *kv_names(m))})
    return axes


def _decode_graph(m: VLM, io_dtype: str):
    from .gqa_decode import build_gqa_decode

    return build_gqa_decode(m, io_dtype)


@graph("decode", inputs=_decode_inputs, dynamic_axes=_decode_axes,
       outputs=lambda m: ["logits", *kv_names(m)], onnx_graph=_decode_graph)
def build_decode(m: VLM) -> nn.Module:
    return DecodeGraph(m)


# ---- IO dtypes -------------------------------------------------------------------------------
IO_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class CastIO(nn.Module):
    """A graph whose floating-point inputs and outputs are `dtype`: inputs are cast to float32 for the
    unchanged float32 computation, outputs back to `dtype`. (Computing in fp16 is a precision preset's business.)"""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, *feeds):
        outs = self.inner(*(f.float() if f.is_floating_point() else f for f in feeds))
        outs = outs if isinstance(outs, tuple) else (outs,)
        return tuple(o.to(self.dtype) if o.is_floating_point() else o for o in outs)


def with_io_dtype(target: GraphTarget, io_dtype: str) -> GraphTarget:
    """`target` with its floating-point inputs and outputs in `io_dtype` ("float32" leaves it as it is).
    Its example inputs are the float32 ones rounded to `io_dtype`."""
    if io_dtype not in IO_DTYPES:
        raise InputError(f"graph IO dtype: expected one of {sorted(IO_DTYPES)}, found {io_dtype!r}")
    if io_dtype == "float32":
        return target
    dtype = IO_DTYPES[io_dtype]

    def inputs(m: VLM, b: int) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in target.inputs(m, b).items()}

    return replace(target, build=lambda m: CastIO(target.build(m), dtype), inputs=inputs, io_dtype=io_dtype)

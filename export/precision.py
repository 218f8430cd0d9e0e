"""Precision presets as one validated table: a rule per component role, for each preset.

    moai-edge export ... --precision PRESET

A package component takes the rule of its role (`ROLE_OF`); a component with no role (the PP-OCR graphs, the
arrays other than the token embedding) keeps float32. The decoder's output head is a role of its own: the MatMul
computing the decoder graph's `logits` (export.quantize.output_head), lowered with the decoder's graphs. Every preset
is checked when this module is imported. What each preset is for, why each rule, and the measurements behind the
choices: docs/precision.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from moai_edge.engines.errors import InputError, MoaiEdgeError


class PrecisionPresetError(MoaiEdgeError):
    """A precision preset's rules do not fit their roles."""


@dataclass(frozen=True)
class Float32:
    """Kept as exported."""

    kind: ClassVar[str] = "fp32"


@dataclass(frozen=True)
class Float16:
    """Weights and computation in float16, inputs and outputs kept float32 (export.quantize.float16)."""

    kind: ClassVar[str] = "fp16"


@dataclass(frozen=True)
class WeightOnly:
    """onnxruntime's MatMulNBits (export.quantize.weight_only): `bits` per weight, a float32 scale per block."""

    bits: int
    block_size: int = 32  # closest to float32 of blocks 16, 32 and 128, for 4% more decode time than 128
    symmetric: bool = True  # asymmetric blocks measured further from float32 (KL 0.0102 against 0.0076)
    accuracy_level: int = 4  # int8 compute: 2.15x faster at one row than level 1, for 1.40x the int4 bytes held

    @property
    def kind(self) -> str:
        return f"int{self.bits}"


@dataclass(frozen=True)
class DynamicInt8:
    """MatMul weights int8 per channel, activations quantized per call; convolutions float32 (quantize_dynamic)."""

    kind: ClassVar[str] = "int8"


@dataclass(frozen=True)
class StaticInt8QDQ:
    """Convolutions and matmuls behind symmetric QuantizeLinear/DequantizeLinear pairs, activation ranges calibrated
    on world images (export.calibration): the explicit int8 TensorRT builds engines from."""

    kind: ClassVar[str] = "int8-qdq"


Rule = Float32 | Float16 | WeightOnly | DynamicInt8 | StaticInt8QDQ

# role -> the rules its graphs can be lowered by (export.reduce_package)
ROLES: dict[str, tuple[type, ...]] = {
    "decoder": (Float32, Float16, WeightOnly),  # the decoder's base matmuls, prefill and decode
    "head": (Float32, Float16, WeightOnly),  # the decoder's output head (and which of these: HEAD_WITH)
    "tower": (Float32, Float16, DynamicInt8, StaticInt8QDQ),  # the vision tower and the experts
    "small": (Float32, Float16, DynamicInt8),  # the family's small graphs
    "embedding": (Float32, Float16),  # the token table, an array
}
# the decoder's rule -> the head rules it can take: the head is lowered with the decoder's graphs, so a float decoder
# has a head of its precision; a weight-only decoder's head keeps float32 or has weight-only bits of its own
HEAD_WITH: dict[type, tuple[type, ...]] = {Float32: (Float32,), Float16: (Float16,), WeightOnly: (Float32, WeightOnly)}
DECODE_IO = ("float32", "float16")
WEIGHT_ONLY_BITS = (4, 8)  # the widths the manifest's kinds (int4, int8) and the precision check's bounds know

# package component -> its role; a component not here keeps float32
ROLE_OF: dict[str, str] = {
    "prefill": "decoder", "decode": "decoder",
    "vision": "tower", "panoptic": "tower", "detector": "tower", "scene_graph": "tower", "scene_graph_masks": "tower",
    "compressor": "small", "crayon": "small",
    "embedding": "embedding",
}
DECODER = tuple(c for c, role in ROLE_OF.items() if role == "decoder")  # the graphs holding the decoder weights


def rule_names(types: tuple[type, ...]) -> str:
    return ", ".join(t.__name__ for t in types)


@dataclass(frozen=True)
class PrecisionPreset:
    """One row of the table: a rule for every role."""

    name: str
    rules: dict[str, Rule]  # role -> rule, every role of ROLES
    # the decode graph's floating-point inputs and outputs: float16 for GPUs, where onnxruntime's CUDA
    # GroupQueryAttention has float16 kernels only and the KV cache stays on the device in half the bytes
    decode_io: str = "float32"

    def __post_init__(self):
        check_preset(self)

    def rule_of(self, component: str) -> Rule:
        role = ROLE_OF.get(component)
        return self.rules[role] if role else Float32()

    def of(self, component: str) -> str:
        """The precision of a package component, as its manifest records it."""
        return self.rule_of(component).kind


def check_preset(preset: PrecisionPreset) -> None:
    """PrecisionPresetError, naming the preset and the role, when a rule does not fit its role."""
    where = f"precision preset {preset.name!r}"
    if preset.decode_io not in DECODE_IO:
        raise PrecisionPresetError(f"{where}: expected a decode_io of {', '.join(DECODE_IO)}, "
                                   f"found {preset.decode_io!r}")
    missing, unknown = ROLES.keys() - preset.rules.keys(), preset.rules.keys() - ROLES.keys()
    if missing or unknown:
        found = [f"no rule for {role!r}" for role in ROLES if role in missing]
        found += [f"a rule for {role!r}, which is no role" for role in preset.rules if role in unknown]
        raise PrecisionPresetError(f"{where}: expected a rule for each role ({', '.join(ROLES)}), found "
                                   f"{'; '.join(found)}")
    for role, rule in preset.rules.items():
        if not isinstance(rule, ROLES[role]):
            raise PrecisionPresetError(f"{where}, role {role!r}: expected a rule of {rule_names(ROLES[role])}, found "
                                       f"{rule!r}")
        problems = weight_only_problems(rule) if isinstance(rule, WeightOnly) else []
        if problems:
            raise PrecisionPresetError(f"{where}, role {role!r}: expected {'; expected '.join(problems)}")
    decoder, head = preset.rules["decoder"], preset.rules["head"]
    allowed = HEAD_WITH[type(decoder)]
    if not isinstance(head, allowed):
        raise PrecisionPresetError(f"{where}, role 'head': with a {type(decoder).__name__} decoder expected a rule of "
                                   f"{rule_names(allowed)}, found {head!r}")


def weight_only_problems(rule: WeightOnly) -> list[str]:
    """What MatMulNBits and the package's kinds do not take in `rule`: 'bits in (4, 8), found 3', ..."""
    problems = []
    if rule.bits not in WEIGHT_ONLY_BITS:
        problems.append(f"bits in {WEIGHT_ONLY_BITS}, found {rule.bits}")
    if rule.block_size < 16 or rule.block_size & (rule.block_size - 1):
        problems.append(f"a block size that is a power of 2 from 16, found {rule.block_size}")
    if rule.accuracy_level not in range(5):
        problems.append(f"an accuracy level from 0 to 4, found {rule.accuracy_level}")
    return problems


def by_name(*presets: PrecisionPreset) -> dict[str, PrecisionPreset]:
    table: dict[str, PrecisionPreset] = {}
    for preset in presets:
        if preset.name in table:
            raise PrecisionPresetError(f"precision preset {preset.name!r}: expected one definition, found two")
        table[preset.name] = preset
    return table


FP32, FP16 = Float32(), Float16()

# the table; why each preset and each rule, with the measurements: docs/precision.md
PRECISION_PRESETS: dict[str, PrecisionPreset] = by_name(
    # the exported graphs as they are, validated against PyTorch (tensor parity, greedy tokens)
    PrecisionPreset("fp32", {"decoder": FP32, "head": FP32, "tower": FP32, "small": FP32, "embedding": FP32}),
    # GPUs: half the bytes everywhere; the decode graph's IO float16 too (its attention and KV cache on the GPU)
    PrecisionPreset("fp16", {"decoder": FP16, "head": FP16, "tower": FP16, "small": FP16, "embedding": FP16},
                    decode_io="float16"),
    # CPU: onnxruntime's MatMulNBits and integer matmuls
    PrecisionPreset("int8", {
        "decoder": WeightOnly(8),  # the base weights every token reads; the branches keep float32
        "head": FP32,  # an 8-bit head was 90% of the int8 decoder's KL and cost count answers
        "tower": DynamicInt8(),  # matmuls only: onnxruntime's int8 Conv is slower than its float one on CPU
        "small": FP32,  # float16 on a CPU computes through casts, slowly
        "embedding": FP16,  # an array indexed per token: half the bytes
    }),
    PrecisionPreset("int4", {
        "decoder": WeightOnly(4),  # the base weights every token reads; the branches keep float32
        "head": WeightOnly(8),  # a 4-bit head was 80% of the int4 decoder's KL; 8 bits add 0.19 GB to MoAI-7B
        "tower": DynamicInt8(),  # as int8
        "small": FP32,  # as int8
        "embedding": FP16,  # as int8
    }),
    # GPUs: the int4 decoder with everything else in float16
    PrecisionPreset("int4-fp16", {"decoder": WeightOnly(4), "head": WeightOnly(8), "tower": FP16, "small": FP16,
                                  "embedding": FP16}, decode_io="float16"),
    # TensorRT: a float16 decoder, the tower and experts in explicit (QDQ) int8 calibrated on world images
    PrecisionPreset("fp16-int8", {"decoder": FP16, "head": FP16, "tower": StaticInt8QDQ(), "small": FP16,
                                  "embedding": FP16}, decode_io="float16"),
)


def precision_preset(name: str) -> PrecisionPreset:
    if name not in PRECISION_PRESETS:
        raise InputError(f"--precision: expected one of {', '.join(PRECISION_PRESETS)}, found {name!r}")
    return PRECISION_PRESETS[name]

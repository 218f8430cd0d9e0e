"""Typed configuration of the two model families and the size presets the tiny-checkpoint factory builds
(precision presets are export.precision's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DecoderConfig:
    """InternLM2 with PLoRA branches (and MoAI's mixers at `mixer_layers`)."""

    vocab_size: int = 92544
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    plora_rank: int = 256
    plora_alpha: int = 256
    seg_branch: bool = False  # CoLLaVO's Plora_seg_A/B
    mixer_layers: tuple[int, ...] = ()
    mixer_rank: int = 64
    mixer_heads: int = 4
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def image_token_id(self) -> int:
        return self.vocab_size  # the extra embedding row added for "<image>"


def default_mixer_layers(num_layers: int) -> tuple[int, ...]:
    """MoAI puts a mixer where (i+1) % 8 == 0 in 32 layers: four evenly spaced; the rule scales down."""
    period = max(1, num_layers // 4)
    return tuple(i for i in range(num_layers) if (i + 1) % period == 0)


@dataclass
class VisionConfig:
    """CLIP ViT; `source_image_size` is the resolution its position table was trained at."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 490
    source_image_size: int = 336
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


@dataclass
class CompressorConfig:
    """MoAI-Compressor: a Perceiver resampler."""

    depth: int = 4
    heads: int = 4
    dim_head: int = 64
    num_latents: int = 64
    ff_mult: int = 1


@dataclass
class CrayonConfig:
    """CoLLaVO's crayon embeddings: 133 COCO panoptic classes + 1, up to 20 instances + 1."""

    num_classes: int = 134
    num_numbers: int = 21


@dataclass
class ModelConfig:
    family: str
    decoder: DecoderConfig
    vision: VisionConfig
    compressor: CompressorConfig | None = None
    crayon: CrayonConfig | None = None
    max_context: int = 4096

    def __post_init__(self):
        from .families import family_of  # the registry builds on these config types

        family_of(self.family)  # an unknown family fails here, naming the known ones

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SizePreset:
    """A model size: the decoder's, vision tower's and compressor's fields, and the context."""

    decoder: dict
    vision: dict
    max_context: int
    compressor: dict = field(default_factory=dict)
    mixer_layers: tuple[int, ...] | None = None  # MoAI's mixer layers; None: the reference's rule


SIZE_PRESETS: dict[str, SizePreset] = {
    # seconds to build and run: for tests
    "tiny": SizePreset(
        decoder=dict(hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     plora_rank=8, plora_alpha=8, mixer_rank=8, mixer_heads=4),
        vision=dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, patch_size=14,
                    image_size=112, source_image_size=84),
        compressor=dict(depth=2, heads=2, dim_head=16, num_latents=8),
        max_context=512,
    ),
    # the trained tiny world's models (export.world): small enough to train on two CPU cores in minutes
    "world": SizePreset(
        decoder=dict(hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                     plora_rank=16, plora_alpha=16, mixer_rank=16, mixer_heads=4),
        # 16-px patches: a 14x14 grid, so the world's smallest objects (10% of the shorter side) fill a patch and
        # CoLLaVO's crayon maps separate them
        vision=dict(hidden_size=64, intermediate_size=256, num_layers=3, num_heads=4, patch_size=16,
                    image_size=224, source_image_size=224),
        compressor=dict(depth=2, heads=4, dim_head=32, num_latents=32),
        max_context=1024,
        mixer_layers=(3,),  # one mixer, in the last layer (the reference has 4 in 32): 45% less CPU a training step
    ),
    # a ~150M-parameter decoder on the full 490x490 / 35x35 image grid: for benchmarks
    "small": SizePreset(
        decoder=dict(hidden_size=1024, intermediate_size=2816, num_layers=12, num_heads=16, num_kv_heads=4,
                     plora_rank=64, plora_alpha=64, mixer_rank=64, mixer_heads=4),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, patch_size=14,
                    image_size=490, source_image_size=336),
        compressor=dict(depth=4, heads=4, dim_head=64, num_latents=64),
        max_context=2048,
    ),
}


def preset_config(family: str, preset: str, *, vocab_size: int) -> ModelConfig:
    """The size preset's sizes, with the family's own branches and parts (export.families)."""
    from .families import family_of  # the registry builds on these config types

    if preset not in SIZE_PRESETS:
        raise ValueError(f"unknown size preset {preset!r}; available: {sorted(SIZE_PRESETS)}")
    p, fam = SIZE_PRESETS[preset], family_of(family)
    parts = fam.preset_parts(p)
    return ModelConfig(
        family=family,
        decoder=fam.configure_decoder(DecoderConfig(vocab_size=vocab_size, **p.decoder), p),
        vision=VisionConfig(**p.vision),
        compressor=parts.compressor,
        crayon=parts.crayon,
        max_context=p.max_context,
    )


# The prompt format both reference models use (REFERENCE.md section 1); written into every manifest.
SYSTEM_PROMPT = "AI assistant should give helpful and detailed answers to user after fully understanding an image."
REFERENCE_PROMPTS = {
    "system": SYSTEM_PROMPT + " <image>",
    "image_token": "<image>",
    "templates": {
        "eval": " [UNUSED_TOKEN_146]user\n{question}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n",
        "demo": " USER: {question} ASSISTANT:",
    },
    "default_template": "eval",
    "answer_stop": "[U",
}

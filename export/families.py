"""The two model families on the export side: everything CoLLaVO and MoAI build, read or package differently.

One object per family, registered with `@export_family(name)`. It says how a size preset configures the
family's own parts, how they are read from a checkpoint's tensors, which backbone graphs it exports and
what the prefill graph's family input is, which experts it packages (and the reference's hub ids for
them), where its panoptic segments are mapped, and what its config.json records beyond InternLM2's
fields. Nothing else in export/ asks which family it builds. (The runtime's twin is runtime/families/;
the PyTorch heads are export.family_heads.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from moai_edge.engines.errors import CheckpointError, InputError

from .config import CompressorConfig, CrayonConfig, DecoderConfig, ModelConfig, SizePreset, default_mixer_layers

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class FamilyParts:
    """The parts of a ModelConfig only one family has."""

    compressor: CompressorConfig | None = None
    crayon: CrayonConfig | None = None


class ExportFamily:
    name: str
    architecture: str  # the `architectures` entry of the published checkpoint's config.json
    graphs: tuple[str, ...]  # backbone graph targets (export.graphs.TARGETS), in export order
    prefill_input: str  # the prefill graph's family input, also VLM.prefill's keyword for it
    prefill_input_axes: dict[int, str]  # its dynamic axes
    experts: tuple[str, ...]  # experts packaged (export.experts.package.EXPERTS), in export order
    reference_experts: dict[str, str]  # expert -> the hub id of the reference's checkpoint
    panoptic_swin: str  # the Swin size ("base" | "large") of the reference's panoptic expert

    def configure_decoder(self, decoder: DecoderConfig, preset: SizePreset) -> DecoderConfig:
        """A size preset's decoder with the family's branches switched on."""
        return decoder

    def preset_parts(self, preset: SizePreset) -> FamilyParts:
        raise NotImplementedError

    def owns_tensors(self, keys: set[str]) -> bool:
        """Whether a checkpoint's tensor names show this family's own modules."""
        raise NotImplementedError

    def infer_parts(self, config: dict, shapes: Shapes, decoder: DecoderConfig) -> FamilyParts:
        """The family's parts from a checkpoint's config.json and tensor shapes."""
        raise NotImplementedError

    def prefill_example(self, cfg: ModelConfig, im_mask: torch.Tensor) -> torch.Tensor:
        """A random value of the prefill graph's family input for an example batch with this `im_mask` (B,L)."""
        raise NotImplementedError

    def panoptic_target_size(self, cfg: ModelConfig) -> int:
        """The square size the panoptic segments are mapped onto."""
        raise NotImplementedError

    def hf_config_extras(self, cfg: ModelConfig) -> dict:
        """config.json fields for sizes no tensor shape tells, recorded for non-published configs."""
        return {}


FAMILIES: dict[str, ExportFamily] = {}


def export_family(name: str):
    """Class decorator: register one instance of the class under `name`."""
    def register(cls):
        instance = cls()
        instance.name = name
        FAMILIES[name] = instance
        return cls
    return register


def family_of(name: str) -> ExportFamily:
    if name not in FAMILIES:
        raise InputError(f"unknown model family '{name}': expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def infer_family(config: dict, keys: set[str], *, given: str | None = None) -> ExportFamily:
    """The family from config.json's architectures, else from the family's own tensors; `given` (--family) must
    agree."""
    by_architecture = {f.architecture: f for f in FAMILIES.values()}
    found = next((by_architecture[a] for a in config.get("architectures", []) if a in by_architecture), None)
    found = found or next((f for f in FAMILIES.values() if f.owns_tensors(keys)), None)
    if found is None:
        raise CheckpointError(f"cannot tell the family: no {'/'.join(sorted(by_architecture))} architecture "
                              "and no compressor or crayon tensors")
    if given is not None and family_of(given) is not found:
        raise CheckpointError(f"--family {given} was given but the checkpoint is a {found.name} checkpoint")
    return found


@export_family("collavo")
class CoLLaVOExport(ExportFamily):
    """Crayon prompt: seg features per image token from the crayon graph; Plora_seg branches in the decoder."""

    architecture = "CoLLaVOModel"
    graphs = ("vision", "crayon", "prefill", "decode")
    prefill_input = "seg_features"
    prefill_input_axes = {0: "batch", 1: "seq"}
    experts = ("panoptic",)
    reference_experts = {"panoptic": "facebook/mask2former-swin-large-coco-panoptic"}
    panoptic_swin = "large"

    def configure_decoder(self, decoder: DecoderConfig, preset: SizePreset) -> DecoderConfig:
        return replace(decoder, seg_branch=True)

    def preset_parts(self, preset: SizePreset) -> FamilyParts:
        return FamilyParts(crayon=CrayonConfig())

    def owns_tensors(self, keys: set[str]) -> bool:
        return "seg_prompt_embed.weight" in keys

    def infer_parts(self, config: dict, shapes: Shapes, decoder: DecoderConfig) -> FamilyParts:
        for key in ("seg_prompt_embed.weight", "seg_num_embed.weight"):
            if key not in shapes:
                raise CheckpointError(f"a CoLLaVO checkpoint needs the crayon tensor '{key}'; it is missing")
        return FamilyParts(crayon=CrayonConfig(num_classes=shapes["seg_prompt_embed.weight"][0],
                                               num_numbers=shapes["seg_num_embed.weight"][0]))

    def prefill_example(self, cfg: ModelConfig, im_mask: torch.Tensor) -> torch.Tensor:
        b, seq = im_mask.shape
        return torch.randn(b, seq, cfg.decoder.hidden_size) * im_mask[..., None]  # zero off the image positions

    def panoptic_target_size(self, cfg: ModelConfig) -> int:
        return cfg.vision.grid  # segments become crayon maps on the vision grid (35 for the real model)


@export_family("moai")
class MoAIExport(ExportFamily):
    """Four experts, verbalized and compressed into aux tokens; mixers in the decoder."""

    architecture = "MoAIModel"
    graphs = ("vision", "compressor", "prefill", "decode")
    prefill_input = "aux_tokens"
    prefill_input_axes = {0: "batch"}
    experts = ("panoptic", "detector", "scene_graph", "ocr")
    # the scene graph's checkpoint is OpenPSG's release file, which has no hub id; OCR's models ship in rapidocr
    reference_experts = {"panoptic": "facebook/mask2former-swin-base-coco-panoptic",
                         "detector": "google/owlv2-base-patch16-ensemble"}
    panoptic_swin = "base"

    def configure_decoder(self, decoder: DecoderConfig, preset: SizePreset) -> DecoderConfig:
        layers = preset.mixer_layers if preset.mixer_layers is not None else default_mixer_layers(decoder.num_layers)
        return replace(decoder, mixer_layers=layers)

    def preset_parts(self, preset: SizePreset) -> FamilyParts:
        return FamilyParts(compressor=CompressorConfig(**preset.compressor))

    def owns_tensors(self, keys: set[str]) -> bool:
        return any(k.startswith("moai_compressor.") for k in keys)

    def infer_parts(self, config: dict, shapes: Shapes, decoder: DecoderConfig) -> FamilyParts:
        layer = re.compile(r"moai_compressor\.layers\.(\d+)\.")
        depth = len({m.group(1) for k in shapes if (m := layer.match(k))})
        for key in ("moai_compressor.layers.0.0.to_q.weight", "moai_compressor.latents",
                    "moai_compressor.layers.0.1.1.weight"):
            if key not in shapes:
                raise CheckpointError(f"a MoAI checkpoint needs the compressor tensor '{key}'; it is missing")
        inner = shapes["moai_compressor.layers.0.0.to_q.weight"][0]
        # head counts are not in any shape: published PerceiverResampler() uses dim_head 64, heads 4
        dim_head = config.get("compressor_dim_head", 64)
        if inner % dim_head:
            raise CheckpointError(f"compressor to_q has {inner} rows, not a multiple of dim_head {dim_head}; "
                                  f"set 'compressor_dim_head' in config.json")
        return FamilyParts(compressor=CompressorConfig(
            depth=depth, heads=inner // dim_head, dim_head=dim_head, num_latents=shapes["moai_compressor.latents"][0],
            ff_mult=shapes["moai_compressor.layers.0.1.1.weight"][0] // decoder.hidden_size,
        ))

    def prefill_example(self, cfg: ModelConfig, im_mask: torch.Tensor) -> torch.Tensor:
        return torch.randn(im_mask.shape[0], cfg.compressor.num_latents, cfg.decoder.hidden_size)

    def panoptic_target_size(self, cfg: ModelConfig) -> int:
        return cfg.vision.image_size  # segments are verbalized and coloured on the image (490 for the real model)

    def hf_config_extras(self, cfg: ModelConfig) -> dict:
        return {"mixer_heads": cfg.decoder.mixer_heads, "compressor_dim_head": cfg.compressor.dim_head}

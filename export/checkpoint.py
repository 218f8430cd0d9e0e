"""Load and save checkpoints in the published on-disk layout of BK-Lee/CoLLaVO-7B and BK-Lee/MoAI-7B.

The layout: config.json (InternLM2 fields), safetensors shards (+ model.safetensors.index.json),
tokenizer.model. The published config.json records neither the PLoRA rank, the mixer placement,
the Compressor size nor the vision tower, so those come from the tensors' shapes and presence, a
`vision_config` entry when the checkpoint has one, and the published defaults otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch

from moai_edge.engines.errors import CheckpointError

from .config import CompressorConfig, CrayonConfig, DecoderConfig, ModelConfig, VisionConfig
from .modeling.vision import interpolate_position_table
from .modeling.vlm import VLM

ARCHITECTURES = {"moai": "MoAIModel", "collavo": "CoLLaVOModel"}
CLIP_HUB_ID = "openai/clip-vit-large-patch14-336"  # the reference loads its vision tower by this id
POS_KEY = "vit.vision_tower.vision_model.embeddings.position_embedding.weight"
SHARD_BYTES = 2 << 30


# ---- locating and reading ----------------------------------------------------------
def resolve(path_or_id: str | Path) -> Path:
    """A local folder, or a hub id fetched with huggingface_hub (no remote code is ever run)."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    if p.exists() or str(path_or_id).startswith((".", "/")):
        raise CheckpointError(f"checkpoint '{path_or_id}' is not a folder with config.json and safetensors shards")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id), allow_patterns=["*.json", "*.safetensors", "*.model"]))
    except Exception as exc:  # network, auth, unknown repo: all mean "not available here"
        raise CheckpointError(f"checkpoint '{path_or_id}' is not a local folder and could not be fetched: {exc}") from exc


def shard_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [root / n for n in names]
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors files in '{root}' (expected model.safetensors or shards with an index)")
    return files


def read_tensors(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in shard_files(root):
        if not f.is_file():
            raise CheckpointError(f"checkpoint shard '{f}' named in the index is missing")
        tensors.update(load_file(str(f)))
    return tensors


# ---- configuration from config.json + tensors ---------------------------------------
def infer_family(config: dict, keys: set[str]) -> str:
    for family, arch in ARCHITECTURES.items():
        if arch in config.get("architectures", []):
            return family
    if any(k.startswith("moai_compressor.") for k in keys):
        return "moai"
    if "seg_prompt_embed.weight" in keys:
        return "collavo"
    raise CheckpointError("cannot tell the family: no MoAIModel/CoLLaVOModel architecture, compressor or crayon tensors")


def infer_config(config: dict, shapes: dict[str, tuple[int, ...]], family: str | None) -> ModelConfig:
    keys = set(shapes)
    found = infer_family(config, keys)
    if family is not None and family != found:
        raise CheckpointError(f"--family {family} was given but the checkpoint is a {found} checkpoint")
    family = found
    lora_a = "model.layers.0.attention.wqkv.Plora_A.weight"
    if lora_a not in shapes:
        raise CheckpointError(f"expected PLoRA tensors such as '{lora_a}'; found none (is this an InternLM-XComposer2-style checkpoint?)")
    mixer_layers = tuple(sorted(int(m.group(1)) for k in keys if (m := re.match(r"model\.layers\.(\d+)\.attention\.moai_GA_img\.weight$", k))))
    dec = DecoderConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        rms_norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=config.get("rope_theta", 1e6),
        max_position_embeddings=config.get("max_position_embeddings", 32768),
        plora_rank=shapes[lora_a][0],
        plora_alpha=config.get("plora_alpha", shapes[lora_a][0]),  # published: alpha == rank (scaling 1.0)
        seg_branch="model.layers.0.attention.wqkv.Plora_seg_A.weight" in keys,
        mixer_layers=mixer_layers,
        mixer_rank=shapes[f"model.layers.{mixer_layers[0]}.attention.moai_CA_img_aux.linear_q.0.weight"][0] if mixer_layers else 64,
        mixer_heads=config.get("mixer_heads", 4),
        bos_id=config.get("bos_token_id", 1),
        eos_id=config.get("eos_token_id", 2),
        pad_id=config.get("pad_token_id", 2),
    )
    vision = VisionConfig(**config["vision_config"]) if "vision_config" in config else VisionConfig()
    compressor = crayon = None
    if family == "moai":
        depth = len({k.split(".")[2] for k in keys if k.startswith("moai_compressor.layers.")})
        inner = shapes["moai_compressor.layers.0.0.to_q.weight"][0]
        # head counts are not in any shape: published PerceiverResampler() uses dim_head 64, heads 4
        dim_head = config.get("compressor_dim_head", 64)
        if inner % dim_head:
            raise CheckpointError(f"compressor to_q has {inner} rows, not a multiple of dim_head {dim_head}; "
                                  f"set 'compressor_dim_head' in config.json")
        compressor = CompressorConfig(
            depth=depth, heads=inner // dim_head, dim_head=dim_head,
            num_latents=shapes["moai_compressor.latents"][0],
            ff_mult=shapes["moai_compressor.layers.0.1.1.weight"][0] // dec.hidden_size,
        )
    else:
        crayon = CrayonConfig(num_classes=shapes["seg_prompt_embed.weight"][0], num_numbers=shapes["seg_num_embed.weight"][0])
    return ModelConfig(family=family, decoder=dec, vision=vision, compressor=compressor, crayon=crayon,
                       max_context=config.get("max_context", 4096))


# ---- loading ---------------------------------------------------------------------------
def load_vision_from_hub(model: VLM) -> dict[str, torch.Tensor]:
    """Checkpoints without `vit.*` tensors: the reference loads CLIP-L/14-336 by hub id."""
    from transformers import CLIPVisionModel

    try:
        clip = CLIPVisionModel.from_pretrained(CLIP_HUB_ID)
    except Exception as exc:
        raise CheckpointError(f"the checkpoint has no vision tower tensors and '{CLIP_HUB_ID}' could not be loaded: {exc}") from exc
    return {f"vit.vision_tower.vision_model.{k.removeprefix('vision_model.')}": v for k, v in clip.state_dict().items()}


def prepare_state(model: VLM, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    state = {k: v.float() for k, v in tensors.items()}
    if POS_KEY not in state:
        state.update({k: v.float() for k, v in load_vision_from_hub(model).items()})
    state[POS_KEY] = interpolate_position_table(state[POS_KEY], cfg.vision.grid).float()
    state.pop("vit.vision_tower.vision_model.embeddings.position_ids", None)
    emb = state["model.tok_embeddings.weight"]
    if emb.shape[0] == cfg.decoder.vocab_size:
        # "<image>" is added after loading; its row is always replaced by image features, so zeros do.
        state["model.tok_embeddings.weight"] = torch.cat([emb, emb.new_zeros(1, emb.shape[1])])
    return state


def load_checkpoint(path_or_id: str | Path, *, family: str | None = None) -> tuple[VLM, Path]:
    """Build the PyTorch model from a checkpoint folder or hub id. Returns (model in eval mode, folder)."""
    root = resolve(path_or_id)
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in checkpoint folder '{root}'")
    config = json.loads(cfg_file.read_text())
    tensors = read_tensors(root)
    cfg = infer_config(config, {k: tuple(v.shape) for k, v in tensors.items()}, family)
    model = VLM(cfg)
    state = prepare_state(model, tensors)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint '{root}' does not fit the {cfg.family} model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"tensor '{k}': expected shape {tuple(own[k].shape)}, checkpoint has {tuple(state[k].shape)}")
    model.load_state_dict(state)
    return model.eval(), root


# ---- saving (tiny checkpoints, same layout) -------------------------------------------
def hf_config(cfg: ModelConfig, *, with_vision_config: bool) -> dict:
    d = cfg.decoder
    out = {
        "architectures": [ARCHITECTURES[cfg.family]],
        "model_type": "internlm2",
        "vocab_size": d.vocab_size,
        "hidden_size": d.hidden_size,
        "intermediate_size": d.intermediate_size,
        "num_hidden_layers": d.num_layers,
        "num_attention_heads": d.num_heads,
        "num_key_value_heads": d.num_kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": d.rms_norm_eps,
        "rope_theta": d.rope_theta,
        "rope_scaling": {"type": "dynamic", "factor": 1.0},
        "max_position_embeddings": d.max_position_embeddings,
        "bias": False,
        "bos_token_id": d.bos_id,
        "eos_token_id": d.eos_id,
        "pad_token_id": d.pad_id,
        "torch_dtype": "float16",
        "max_context": cfg.max_context,
    }
    if with_vision_config:
        out["vision_config"] = asdict(cfg.vision)
    if cfg.family == "moai":  # sizes no tensor shape tells, recorded for non-published configs
        out["mixer_heads"] = d.mixer_heads
        out["compressor_dim_head"] = cfg.compressor.dim_head
    return out


def save_checkpoint(tensors: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: Path, *, shards: int = 2) -> None:
    """Write fp16 safetensors shards + index + config.json as the published checkpoints are laid out."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].half().contiguous() for k in part}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    (out_dir / "config.json").write_text(json.dumps(hf_config(cfg, with_vision_config=True), indent=2))

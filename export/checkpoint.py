"""Load and save checkpoints in the published on-disk layout of BK-Lee/CoLLaVO-7B and BK-Lee/MoAI-7B.

The layout: config.json (InternLM2 fields), safetensors shards (+ model.safetensors.index.json),
tokenizer.model. The published config.json records neither the PLoRA rank, the mixer placement,
the Compressor size nor the vision tower, so those come from the tensors' shapes and presence, a
`vision_config` entry (in config.json or given by the caller) for what no shape tells, and the
published defaults otherwise. Tensors the reference saves but never uses are accepted and reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from moai_edge.engines.errors import CheckpointError

from .config import DecoderConfig, ModelConfig, VisionConfig
from .families import family_of, infer_family
from .modeling.vision import interpolate_position_table
from .modeling.vlm import VLM

CLIP_HUB_ID = "openai/clip-vit-large-patch14-336"  # the reference loads its vision tower by this id
VIT = "vit.vision_tower.vision_model."
POS_KEY = VIT + "embeddings.position_embedding.weight"
PATCH_KEY = VIT + "embeddings.patch_embedding.weight"
# the reference builds a Plora_seg pair on every PLoRA linear but calls w2 without seg features
UNUSED_W2_SEG = re.compile(r"model\.layers\.(\d+)\.feed_forward\.w2\.Plora_seg_([AB])\.weight$")
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
        raise CheckpointError(f"checkpoint '{path_or_id}' is not a local folder and could not be fetched: "
                              f"{exc}") from exc


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}': expected a JSON object, found {type(data).__name__}")
    return data


def shard_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"'{index}': expected a 'weight_map' object of tensor name -> shard file")
        return [root / n for n in sorted(set(weight_map.values()))]
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors files in '{root}' (expected model.safetensors or shards with an index)")
    return files


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint shard '{path}' named in the index is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint shard '{path}' is not a readable safetensors file "
                              f"(truncated or corrupt?): {exc}") from exc


def read_tensors(root: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in shard_files(root):
        tensors.update(read_shard(f))
    return tensors


# ---- configuration from config.json + tensors ---------------------------------------
def infer_config(config: dict, shapes: dict[str, tuple[int, ...]], family: str | None, *,
                 vision_config: dict | None = None) -> ModelConfig:
    """`vision_config`: fields of VisionConfig given by the caller (`--vision-config`), e.g. {"num_heads": 12}."""
    keys = set(shapes)
    found = infer_family(config, keys, given=family)
    lora_a = "model.layers.0.attention.wqkv.Plora_A.weight"
    if lora_a not in shapes:
        raise CheckpointError(f"expected PLoRA tensors such as '{lora_a}'; found none "
                              "(is this an InternLM-XComposer2-style checkpoint?)")
    mixer_layers = tuple(sorted(int(m.group(1)) for k in keys
                                if (m := re.match(r"model\.layers\.(\d+)\.attention\.moai_GA_img\.weight$", k))))
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
        mixer_rank=(shapes[f"model.layers.{mixer_layers[0]}.attention.moai_CA_img_aux.linear_q.0.weight"][0]
                    if mixer_layers else 64),
        mixer_heads=config.get("mixer_heads", 4),
        bos_id=config.get("bos_token_id", 1),
        eos_id=config.get("eos_token_id", 2),
        pad_id=config.get("pad_token_id", 2),
    )
    vision = infer_vision(config, shapes, vision_config)
    parts = found.infer_parts(config, shapes, dec)
    return ModelConfig(family=found.name, decoder=dec, vision=vision, compressor=parts.compressor, crayon=parts.crayon,
                       max_context=config.get("max_context", 4096))


# ---- the vision tower's geometry: tensors first, then vision_config, then the published CLIP-L -------
PUBLISHED_VISION = VisionConfig()  # CLIP ViT-L/14-336 at 490
VISION_FIELDS = {f.name: type(getattr(PUBLISHED_VISION, f.name)) for f in fields(VisionConfig)}
GEOMETRY_SOURCES = {"hidden_size": "rows of the patch embedding", "patch_size": "the patch embedding's kernel",
                    "num_layers": "the encoder layer indices", "intermediate_size": "rows of layer 0's fc1",
                    "source_image_size": "the position table's rows (grid x patch size)"}


def tensor_vision_geometry(shapes: dict[str, tuple[int, ...]]) -> tuple[dict, str]:
    """The tower's geometry from the `vit.*` tensors, and where it was read. Without any, the reference
    loads CLIP-L/14-336 by hub id, so the geometry is the published one."""
    if not any(k.startswith(VIT) for k in shapes):
        published = {k: getattr(PUBLISHED_VISION, k) for k in (*GEOMETRY_SOURCES, "num_heads")}
        return published, f"'{CLIP_HUB_ID}' (loaded as the checkpoint has no vision tensors) has"
    fc1 = f"{VIT}encoder.layers.0.mlp.fc1.weight"
    for key in (PATCH_KEY, POS_KEY, fc1):
        if key not in shapes:
            raise CheckpointError(f"the checkpoint has vision tower tensors but not '{key}'")
    if len(shapes[PATCH_KEY]) != 4:
        raise CheckpointError(f"'{PATCH_KEY}': expected a (width, 3, patch, patch) kernel, "
                              f"found shape {shapes[PATCH_KEY]}")
    width, _, patch, _ = shapes[PATCH_KEY]
    layer_re = re.compile(re.escape(VIT) + r"encoder\.layers\.(\d+)\.")
    layers = {int(m.group(1)) for k in shapes if (m := layer_re.match(k))}
    grid = round((shapes[POS_KEY][0] - 1) ** 0.5)
    if grid * grid + 1 != shapes[POS_KEY][0]:
        raise CheckpointError(f"'{POS_KEY}' has {shapes[POS_KEY][0]} rows, expected 1 + a square grid")
    geometry = dict(hidden_size=width, patch_size=patch, num_layers=max(layers) + 1,
                    intermediate_size=shapes[fc1][0], source_image_size=grid * patch)
    return geometry, "the checkpoint's tensors have"


def given_vision_fields(config: dict, option: dict | None) -> dict[str, tuple[object, str]]:
    """{field: (value, who gave it)} from config.json's `vision_config` and --vision-config; both must agree."""
    given: dict[str, tuple[object, str]] = {}
    for source, values in (("config.json's vision_config", config.get("vision_config") or {}),
                           ("--vision-config", option or {})):
        if not isinstance(values, dict):
            raise CheckpointError(f"{source}: expected a JSON object such as {{\"num_heads\": 16}}, found {values!r}")
        for key, value in values.items():
            check_vision_field(key, value, source)
            if key in given and given[key][0] != value:
                raise CheckpointError(f"vision {key}: {given[key][1]} gives {given[key][0]!r}, "
                                      f"{source} gives {value!r}")
            given[key] = (value, source)
    return given


def check_vision_field(key: str, value, source: str) -> None:
    if key not in VISION_FIELDS:
        raise CheckpointError(f"{source}: unknown vision field '{key}'; expected some of {sorted(VISION_FIELDS)}")
    want = VISION_FIELDS[key]
    ok = isinstance(value, str) if want is str else (isinstance(value, (int, float) if want is float else int)
                                                      and not isinstance(value, bool) and value > 0)
    if not ok:
        raise CheckpointError(f"{source}: vision {key} must be a positive {want.__name__}, found {value!r}")


def default_vision_heads(width: int) -> int:
    """The head count is in no tensor's shape: the published one fits only the published width."""
    if width != PUBLISHED_VISION.hidden_size:
        raise CheckpointError(
            f"the vision tower is {width} wide, not CLIP-L's {PUBLISHED_VISION.hidden_size}, and its head count is in "
            f"no tensor: give it with --vision-config '{{\"num_heads\": N}}' (or a vision_config in config.json)")
    return PUBLISHED_VISION.num_heads


def infer_vision(config: dict, shapes: dict[str, tuple[int, ...]], option: dict | None) -> VisionConfig:
    geometry, where = tensor_vision_geometry(shapes)
    given = given_vision_fields(config, option)
    for key, found in geometry.items():
        if key in given and given[key][0] != found:
            value, source = given[key]
            detail = f" ({GEOMETRY_SOURCES[key]})" if key in GEOMETRY_SOURCES and "tensors have" in where else ""
            raise CheckpointError(f"vision {key}: {source} gives {value}, {where} {found}{detail}")
    values = {**{k: v for k, (v, _) in given.items()}, **geometry}
    if "num_heads" not in values:
        values["num_heads"] = default_vision_heads(geometry["hidden_size"])
    vision = VisionConfig(**values)
    if vision.hidden_size % vision.num_heads:
        raise CheckpointError(f"vision num_heads {vision.num_heads} does not divide the tower's width "
                              f"{vision.hidden_size}")
    if vision.image_size % vision.patch_size:
        raise CheckpointError(f"vision image_size {vision.image_size} is not a multiple of the patch size "
                              f"{vision.patch_size}")
    return vision


# ---- loading ---------------------------------------------------------------------------
def load_vision_from_hub(model: VLM) -> dict[str, torch.Tensor]:
    """Checkpoints without `vit.*` tensors: the reference loads CLIP-L/14-336 by hub id."""
    from transformers import CLIPVisionModel

    try:
        clip = CLIPVisionModel.from_pretrained(CLIP_HUB_ID)
    except Exception as exc:
        raise CheckpointError(f"the checkpoint has no vision tower tensors and '{CLIP_HUB_ID}' could not be loaded: "
                              f"{exc}") from exc
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


@dataclass
class LoadReport:
    """What loading did beyond a plain load_state_dict: tensors accepted but unused, and why."""

    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def drop_unused_reference_tensors(tensors: dict[str, torch.Tensor], cfg: ModelConfig, report: LoadReport) -> None:
    """CoLLaVO's reference gives w2 a Plora_seg pair like every PLoRA linear but calls w2 without seg
    features: its checkpoints carry `feed_forward.w2.Plora_seg_A/B` that no forward uses. Dropped here."""
    d = cfg.decoder
    if not d.seg_branch:
        return
    want = {"A": (d.plora_rank, d.intermediate_size), "B": (d.hidden_size, d.plora_rank)}
    unused = sorted(k for k in tensors if (m := UNUSED_W2_SEG.match(k)) and int(m.group(1)) < d.num_layers)
    for key in unused:
        shape = want[UNUSED_W2_SEG.match(key).group(2)]
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"tensor '{key}': expected shape {shape}, checkpoint has {tuple(tensors[key].shape)}")
        del tensors[key]
    if unused:
        report.ignored.extend(unused)
        report.notes.append(f"ignored {len(unused)} tensors feed_forward.w2.Plora_seg_A/B: the reference builds them "
                            "but calls w2 without seg features, so its forward never uses them")


def check_state_fits(model: VLM, state: dict[str, torch.Tensor], root: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint '{root}' does not fit the {model.cfg.family} model: "
                              f"missing {missing[:8]}, unexpected {unexpected[:8]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"tensor '{k}': expected shape {tuple(own[k].shape)}, "
                              f"checkpoint has {tuple(state[k].shape)}")


def load_checkpoint_with_report(path_or_id: str | Path, *, family: str | None = None,
                                vision_config: dict | None = None) -> tuple[VLM, Path, LoadReport]:
    """Build the PyTorch model from a checkpoint folder or hub id: (model in eval mode, folder, what was ignored).
    `vision_config`: VisionConfig fields no tensor gives (the head count), e.g. {"num_heads": 12}."""
    root = resolve(path_or_id)
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in checkpoint folder '{root}'")
    config = read_json(cfg_file)
    tensors = read_tensors(root)
    cfg = infer_config(config, {k: tuple(v.shape) for k, v in tensors.items()}, family, vision_config=vision_config)
    report = LoadReport()
    drop_unused_reference_tensors(tensors, cfg, report)
    model = VLM(cfg)
    state = prepare_state(model, tensors)
    check_state_fits(model, state, root)
    model.load_state_dict(state)
    return model.eval(), root, report


def load_checkpoint(path_or_id: str | Path, *, family: str | None = None,
                    vision_config: dict | None = None) -> tuple[VLM, Path]:
    """(model in eval mode, folder): `load_checkpoint_with_report` without the report."""
    model, root, _ = load_checkpoint_with_report(path_or_id, family=family, vision_config=vision_config)
    return model, root


# ---- saving (tiny checkpoints, same layout) -------------------------------------------
def hf_config(cfg: ModelConfig, *, with_vision_config: bool) -> dict:
    d = cfg.decoder
    out = {
        "architectures": [family_of(cfg.family).architecture],
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
    out.update(family_of(cfg.family).hf_config_extras(cfg))
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
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    (out_dir / "config.json").write_text(json.dumps(hf_config(cfg, with_vision_config=True), indent=2))

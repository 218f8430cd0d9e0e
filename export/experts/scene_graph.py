"""PSGTR (OpenPSG's one-stage panoptic scene-graph transformer), ResNet-50 + DETR, as MoAI runs it.

The transformer layers and the attention map are transformers' DETR modules; the ResNet is built
from torchvision's Bottleneck blocks with mmdet's key names; the mask head keeps OpenPSG's layout,
whose 1x1 FPN adapters run once per image before the per-query copy. OpenPSG's
`psgtr_r50_epoch_60.pth` (an mmcv checkpoint) loads through `load_scene_graph` with
`torch.load(weights_only=True)`; tiny checkpoints are saved in that same format.

The model returns, for the last decoder layer, the subject/object class logits (classes + "no
object" last), the predicate logits ("no relation" first), the boxes (cx, cy, w, h in 0..1) and
the subject/object mask logits at 1/4 of the input. Padding is not masked: the reference builds its
padding mask from the first image's unpadded shape, so for the single images (and same-size
batches) MoAI feeds it the mask is all "valid"; the runtime batches only images of one shape.

It is exported as two graphs. `scene_graph` is everything but the two mask heads: the heads' logits
and boxes, and what the mask heads read (the projected and backbone features, each query's attention
maps). `scene_graph_masks` runs the mask heads on the queries it is given. The mask heads are 90% of
the model's work at 800x1066 (two 100-query FPN heads), and post-processing reads the masks of only
the queries behind relations that pass its score cuts (runtime.experts.scene_graph.Triplets), so
the runtime runs them on those alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from moai_edge.engines.errors import CheckpointError
from moai_edge.runtime import MASK_INPUTS  # the trunk graph's outputs the mask-heads graph takes

from ..graphs import GraphTarget
from .pretrained import pickle_problem

REFERENCE_FILE = "psgtr_r50_epoch_60.pth"  # OpenPSG's release; there is no hub id for it
SCALE = (1333, 800)  # MoAI's test pipeline: Resize(scale=(1333, 800), keep_ratio=True)
TINY_SCALE = (666, 400)  # tiny checkpoints carry this smaller test scale in their meta, under TEST_SCALE_KEY
TEST_SCALE_KEY = "moai_edge_test_scale"


@dataclass(frozen=True)
class PsgtrConfig:
    stem_width: int = 64  # ResNet-50: 64, stages of 3, 4, 6, 3 bottlenecks
    depths: tuple[int, ...] = (3, 4, 6, 3)
    d_model: int = 256
    heads: int = 8  # not readable from any shape: the published value
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_queries: int = 100
    num_classes: int = 133
    num_relations: int = 56

    @property
    def channels(self) -> list[int]:
        return [self.stem_width * 4 * 2 ** i for i in range(4)]


TINY = PsgtrConfig(stem_width=8, depths=(1, 1, 1, 1), d_model=128, ffn_dim=256, encoder_layers=2, decoder_layers=2,
                   num_queries=20)


class ResNet(nn.Module):
    """mmdet's ResNet (style 'pytorch', frozen BN in eval): C2..C5."""

    def __init__(self, stem: int, depths: tuple[int, ...]):
        from torchvision.models.resnet import Bottleneck

        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for i, depth in enumerate(depths):
            planes, stride = stem * 2 ** i, 1 if i == 0 else 2
            down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
            blocks = ([Bottleneck(inplanes, planes, stride, down)]
                      + [Bottleneck(planes * 4, planes) for _ in range(depth - 1)])
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes * 4

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats


def sine_position_embedding(ones: torch.Tensor, num_feats: int) -> torch.Tensor:
    """mmdet's SinePositionalEncoding(normalize=True) for an all-valid (B, h, w) mask -> (B, 2*num_feats, h, w)."""
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    scale, eps = 2 * math.pi, 1e-6
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class MLP(nn.Module):
    def __init__(self, dim: int, out: int, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim if i < layers - 1 else out) for i in range(layers))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _expand(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.unsqueeze(1).repeat(1, n, 1, 1, 1).flatten(0, 1)


class MaskHeadSmallConv(nn.Module):
    """DETR-segm's FPN mask head with OpenPSG's names; adapters see each image once, then are copied per query."""

    def __init__(self, dim: int, fpn_dims: list[int], context: int):
        super().__init__()
        inter = [dim, context // 2, context // 4, context // 8, context // 16]
        self.lay1, self.gn1 = nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(8, dim)
        for i in range(2, 6):
            setattr(self, f"lay{i}", nn.Conv2d(inter[i - 2] if i > 2 else dim, inter[i - 1], 3, padding=1))
            setattr(self, f"gn{i}", nn.GroupNorm(8, inter[i - 1]))
        self.out_lay = nn.Conv2d(inter[4], 1, 3, padding=1)
        for i in range(3):
            setattr(self, f"adapter{i + 1}", nn.Conv2d(fpn_dims[i], inter[i + 1], 1))

    def forward(self, x, attention, fpns, *, split_first: bool = False):
        """x (b, d, h, w), attention (b, n, heads, h, w), fpns at strides 16, 8, 4 -> (b * n, 1, H/4, W/4).
        `split_first`: lay1 is linear, so its part over x (the same for every query) is computed once per image; the
        same sum in another order (the exported graph: a third of the mask heads' work at n = 100)."""
        b, n = attention.shape[:2]
        if split_first:
            d, weight = x.shape[1], self.lay1.weight
            own = F.conv2d(attention.flatten(0, 1), weight[:, d:], self.lay1.bias, padding=1)
            x = (F.conv2d(x, weight[:, :d], padding=1).unsqueeze(1) + own.view(b, n, *own.shape[1:])).flatten(0, 1)
        else:
            x = self.lay1(torch.cat([_expand(x, n), attention.flatten(0, 1)], 1))
        x = F.relu(self.gn1(x))
        x = F.relu(self.gn2(self.lay2(x)))
        for i, fpn in enumerate(fpns):
            cur = getattr(self, f"adapter{i + 1}")(fpn)
            up = F.interpolate(x, size=cur.shape[-2:], mode="nearest")
            x = (cur.unsqueeze(1) + up.view(b, n, *up.shape[1:])).flatten(0, 1)  # the per-query copy, by broadcasting
            x = F.relu(getattr(self, f"gn{i + 3}")(getattr(self, f"lay{i + 3}")(x)))
        return self.out_lay(x)


class Psgtr(nn.Module):
    def __init__(self, cfg: PsgtrConfig):
        from transformers import DetrConfig
        from transformers.models.detr.modeling_detr import DetrDecoderLayer, DetrEncoderLayer, DetrMHAttentionMap

        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        detr = DetrConfig(d_model=d, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
                          encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim, activation_function="relu",
                          dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, use_timm_backbone=False,
                          use_pretrained_backbone=False)
        detr._attn_implementation = "eager"
        self.backbone = ResNet(cfg.stem_width, cfg.depths)
        c = cfg.channels
        self.input_proj = nn.Conv2d(c[3], d, 1)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.encoder = nn.ModuleList(DetrEncoderLayer(detr) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DetrDecoderLayer(detr) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        for side in ("sub", "obj"):
            setattr(self, f"{side}_cls_embed", nn.Linear(d, cfg.num_classes + 1))
            setattr(self, f"{side}_box_embed", MLP(d, 4))
            setattr(self, f"{side}_bbox_attention", DetrMHAttentionMap(d, cfg.heads))
            setattr(self, f"{side}_mask_head", MaskHeadSmallConv(d + cfg.heads, [c[2], c[1], c[0]], d))
        self.rel_cls_embed = nn.Linear(d, cfg.num_relations + 1)

    def forward(self, pixel_values):
        out = self.trunk(pixel_values)
        masks = self.masks(*(out.pop(name) for name in MASK_INPUTS))
        return tuple({**out, **masks}[name] for name in OUTPUTS)

    def trunk(self, pixel_values) -> dict[str, torch.Tensor]:
        """Everything but the mask heads: the heads' outputs and the mask heads' inputs (MASK_INPUTS), by name."""
        feats = self.backbone(pixel_values)
        src = self.input_proj(feats[3])
        b, d, h, w = src.shape
        pos = sine_position_embedding(torch.ones_like(src[:, 0]), d // 2).flatten(2).transpose(1, 2)
        memory = src.flatten(2).transpose(1, 2)
        for layer in self.encoder:
            memory = layer(memory, None, spatial_position_embeddings=pos)
        query_pos = self.query_embed.weight[None].repeat(b, 1, 1)
        hidden = torch.zeros_like(query_pos)
        for layer in self.decoder:
            hidden = layer(hidden, None, spatial_position_embeddings=pos, object_queries_position_embeddings=query_pos,
                           encoder_hidden_states=memory)
        hidden = self.decoder_norm(hidden)
        memory_map = memory.transpose(1, 2).reshape(b, d, h, w)
        return {"sub_logits": self.sub_cls_embed(hidden), "obj_logits": self.obj_cls_embed(hidden),
                "rel_logits": self.rel_cls_embed(hidden),
                "sub_boxes": self.sub_box_embed(hidden).sigmoid(), "obj_boxes": self.obj_box_embed(hidden).sigmoid(),
                "features_s32": src, "features_s16": feats[2], "features_s8": feats[1], "features_s4": feats[0],
                **{f"{side}_attention": getattr(self, f"{side}_bbox_attention")(hidden, memory_map)
                   for side in ("sub", "obj")}}

    def masks(self, src, fpn16, fpn8, fpn4, sub_attention, obj_attention, *,
              split_first: bool = False) -> dict[str, torch.Tensor]:
        """The mask logits (b, n, H/4, W/4) of the n queries whose attention maps (b, n, heads, h, w) are given."""
        out = {}
        for side, attention in (("sub", sub_attention), ("obj", obj_attention)):
            masks = getattr(self, f"{side}_mask_head")(src, attention, [fpn16, fpn8, fpn4], split_first=split_first)
            out[f"{side}_masks"] = masks.view(*attention.shape[:2], masks.shape[-2], masks.shape[-1])
        return out


OUTPUTS = ("sub_logits", "obj_logits", "rel_logits", "sub_boxes", "obj_boxes", "sub_masks", "obj_masks")
TRUNK_OUTPUTS = OUTPUTS[:5] + MASK_INPUTS


# ---- OpenPSG checkpoint layout --------------------------------------------------------------------
# mmcv 1.x names (the release) and mmdet 3 names (what OpenPSG's own loader converts them to)
_ATTN = {"encoder": {"attentions.0": "self_attn", "self_attn": "self_attn"},
         "decoder": {"attentions.0": "self_attn", "self_attn": "self_attn", "attentions.1": "encoder_attn",
                     "cross_attn": "encoder_attn"}}
_NORMS = {"encoder": ["self_attn_layer_norm", "final_layer_norm"],
          "decoder": ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"]}
_LAYER = re.compile(r"bbox_head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)")


def to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenPSG keys -> this module's keys; nn.MultiheadAttention's packed in_proj is split into q, k, v."""
    out = {}
    for key, value in state.items():
        m = _LAYER.fullmatch(key)
        if m is None:
            if key.startswith("backbone."):
                out[key] = value
            elif (key == "bbox_head.transformer.decoder.post_norm.weight"
                  or key == "bbox_head.transformer.decoder.post_norm.bias"):
                out["decoder_norm." + key.rsplit(".", 1)[1]] = value
            elif key.startswith("bbox_head.") and "loss" not in key:
                out[key[len("bbox_head."):].replace("q_linear", "q_proj").replace("k_linear", "k_proj")] = value
            continue
        part, idx, rest = m.groups()
        prefix = f"{part}.{idx}."
        for src, dst in _ATTN[part].items():
            if rest.startswith(src + ".attn."):
                tail = rest[len(src) + 6:]
                if tail.startswith("in_proj_"):
                    kind = tail[len("in_proj_"):]
                    for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                        out[f"{prefix}{dst}.{name}.{kind}"] = chunk
                elif tail.startswith("out_proj."):
                    out[f"{prefix}{dst}.o_proj.{tail[len('out_proj.'):]}"] = value
                break
        else:
            ffn = re.fullmatch(r"(?:ffns\.0|ffn)\.layers\.(0\.0|1)\.(weight|bias)", rest)
            norm = re.fullmatch(r"norms\.(\d)\.(weight|bias)", rest)
            if ffn:
                out[f"{prefix}mlp.{'fc1' if ffn.group(1) == '0.0' else 'fc2'}.{ffn.group(2)}"] = value
            elif norm:
                out[f"{prefix}{_NORMS[part][int(norm.group(1))]}.{norm.group(2)}"] = value
            else:
                out["unmapped:" + key] = value
    return out


def to_openpsg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This module's keys -> the release's mmcv 1.x names (for tiny checkpoints in the real layout)."""
    out, packed = {}, {}
    for key, value in state.items():
        m = re.fullmatch(r"(encoder|decoder)\.(\d+)\.(.+)", key)
        if key.startswith("backbone."):
            out[key] = value
        elif key.startswith("decoder_norm."):
            out["bbox_head.transformer.decoder.post_norm." + key.split(".", 1)[1]] = value
        elif m is None:
            out["bbox_head." + key.replace("q_proj", "q_linear").replace("k_proj", "k_linear")] = value
        else:
            part, idx, rest = m.groups()
            prefix = f"bbox_head.transformer.{part}.layers.{idx}."
            attn = {v: k for k, v in _ATTN[part].items() if k.startswith("attentions")}
            head, _, tail = rest.partition(".")
            if head in attn:
                proj, kind = tail.split(".")
                if proj == "o_proj":
                    out[f"{prefix}{attn[head]}.attn.out_proj.{kind}"] = value
                else:
                    packed.setdefault(f"{prefix}{attn[head]}.attn.in_proj_{kind}", {})[proj] = value
            elif head == "mlp":
                out[f"{prefix}ffns.0.layers.{'0.0' if tail.startswith('fc1') else '1'}.{tail.split('.')[1]}"] = value
            else:
                out[f"{prefix}norms.{_NORMS[part].index(head)}.{tail}"] = value
    for key, parts in packed.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def config_from_state(state: dict[str, torch.Tensor], heads: int = 8) -> PsgtrConfig:
    """Every size but the head count comes from tensor shapes."""
    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})

    try:
        return PsgtrConfig(
            stem_width=state["backbone.conv1.weight"].shape[0],
            depths=tuple(count(rf"backbone\.layer{i}\.(\d+)\..+") for i in range(1, 5)),
            d_model=state["input_proj.weight"].shape[0], heads=heads,
            ffn_dim=state["encoder.0.mlp.fc1.weight"].shape[0],
            encoder_layers=count(r"encoder\.(\d+)\..+"), decoder_layers=count(r"decoder\.(\d+)\..+"),
            num_queries=state["query_embed.weight"].shape[0], num_classes=state["sub_cls_embed.weight"].shape[0] - 1,
            num_relations=state["rel_cls_embed.weight"].shape[0] - 1,
        )
    except KeyError as exc:
        raise CheckpointError(f"scene-graph checkpoint: expected OpenPSG's PSGTR keys, missing {exc}") from exc


def load_scene_graph(path: str | Path) -> Psgtr:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"scene-graph checkpoint '{path}' not found (expected OpenPSG's {REFERENCE_FILE})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path}: not loadable with torch.load(weights_only=True), found {pickle_problem(exc)}; "
                              "if the file is whole (not truncated or corrupt), re-save its 'state_dict' alone to load "
                              "it safely") from exc
    raw = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected an mmcv checkpoint dict with 'state_dict', "
                              f"found {type(ckpt).__name__}")
    state = to_ours(raw)
    unmapped = sorted(k[len("unmapped:"):] for k in state if k.startswith("unmapped:"))
    if unmapped:
        raise CheckpointError(f"{path}: keys with no place in PSGTR: "
                              f"{unmapped[:5]}{' ...' if len(unmapped) > 5 else ''}")
    model = Psgtr(config_from_state(state))
    meta = ckpt.get("meta") or {}
    model.test_scale = tuple(meta.get(TEST_SCALE_KEY, SCALE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: PSGTR weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def build_tiny_scene_graph(out_dir: Path, *, preset: str, seed: int) -> Path:
    """Seeded weights saved as an mmcv checkpoint with the release's key names."""
    torch.manual_seed(seed)
    cfg = TINY if preset == "tiny" else PsgtrConfig()
    model = Psgtr(cfg)
    with torch.no_grad():  # queries that differ, confident entities and predicates, query-specific masks
        model.query_embed.weight.mul_(8.0)
        for layer in model.decoder:  # no query-independent path: the hidden state is what each query attended to
            for lin in layer.modules():
                if isinstance(lin, nn.Linear):
                    lin.bias.zero_()
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.fc2.weight.zero_()
            layer.encoder_attn.q_proj.weight.mul_(8.0)
            layer.encoder_attn.k_proj.weight.mul_(8.0)
        for side in ("sub", "obj"):
            getattr(model, f"{side}_cls_embed").weight.mul_(10.0)
            getattr(model, f"{side}_bbox_attention").q_proj.weight.mul_(8.0)
            head = getattr(model, f"{side}_mask_head")
            head.lay1.weight[:, cfg.d_model:].mul_(2000.0)  # the attention-map channels
            head.out_lay.weight.mul_(8.0)
        model.rel_cls_embed.weight.mul_(10.0)
        # torchvision's ResNet init keeps activations at scale; BN statistics not 0/1
        for m in model.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REFERENCE_FILE
    meta = {"epoch": 60, TEST_SCALE_KEY: list(TINY_SCALE if preset == "tiny" else SCALE)}
    torch.save({"meta": meta, "state_dict": to_openpsg(model.state_dict())}, path)
    return path


class SceneGraphTrunk(nn.Module):
    def __init__(self, model: Psgtr):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model.trunk(pixel_values)
        return tuple(out[name] for name in TRUNK_OUTPUTS)


class SceneGraphMasks(nn.Module):
    def __init__(self, model: Psgtr):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        out = self.model.masks(*inputs, split_first=True)
        return out["sub_masks"], out["obj_masks"]


def example_size(model: Psgtr) -> tuple[int, int]:
    return (800, 800) if model.cfg.d_model == 256 else (416, 416)


def _example(model: Psgtr, batch: int) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(batch, 3, *example_size(model))}


def _example_masks(model: Psgtr, batch: int) -> dict[str, torch.Tensor]:
    """The trunk's outputs on a random image, for 7 of its queries."""
    with torch.no_grad():
        out = model.trunk(torch.randn(batch, 3, *example_size(model)))
    queries = torch.randperm(model.cfg.num_queries)[:7]
    return {name: out[name][:, queries] if name.endswith("attention") else out[name] for name in MASK_INPUTS}


_SPATIAL = {"features_s32": ("height_32", "width_32"), "features_s16": ("height_16", "width_16"),
            "features_s8": ("height_8", "width_8"), "features_s4": ("mask_height", "mask_width")}

SCENE_GRAPH = GraphTarget(
    name="scene_graph", build=SceneGraphTrunk, inputs=_example,
    dynamic_axes=lambda m: {"pixel_values": {0: "batch", 2: "height", 3: "width"},
                            **{k: {0: "batch"} for k in OUTPUTS[:5]},
                            **{k: {0: "batch", 2: h, 3: w} for k, (h, w) in _SPATIAL.items()},
                            **{k: {0: "batch", 3: "height_32", 4: "width_32"} for k in MASK_INPUTS[4:]}},
    output_names=lambda m: list(TRUNK_OUTPUTS),
)

SCENE_GRAPH_MASKS = GraphTarget(
    name="scene_graph_masks", build=SceneGraphMasks, inputs=_example_masks,
    dynamic_axes=lambda m: {**{k: {0: "batch", 2: h, 3: w} for k, (h, w) in _SPATIAL.items()},
                            **{k: {0: "batch", 1: "queries", 3: "height_32", 4: "width_32"} for k in MASK_INPUTS[4:]},
                            **{k: {0: "batch", 1: "queries", 2: "mask_height", 3: "mask_width"} for k in OUTPUTS[5:]}},
    output_names=lambda m: list(OUTPUTS[5:]),
)

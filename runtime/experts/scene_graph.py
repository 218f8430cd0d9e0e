"""Scene graph (PSGTR): the reference's pre-processing and OpenPSG's `_get_bboxes_single`, in numpy.

Pre-processing is mmdet's test pipeline as MoAI configures it: mmcv's keep-ratio rescale to
(1333, 800) with cv2's bilinear resize, `Normalize(to_rgb=True)` applied to an image that is
already RGB (so the network sees B, G, R), zero padding to a multiple of 32.

Post-processing follows `PSGTrHead._get_bboxes_single` with masks, then `triplet2Result` with
`eval_pan_rels=True`: softmax heads, the top 100 of the flattened predicate scores, masks resized
(nearest, in fp16) to the image and cast to bfloat16, triplet de-duplication by mask IoU > 0.5,
the entity/predicate score cuts (whose "no object" test compares 1-based labels with a 0-based
bound, so it drops class 131, wall-other-merged, and never the background), and the panoptic step
that merges stuff of one class and overlapping things before numbering the entities that own
pixels. Its bfloat16 arithmetic is reproduced bit for bit.
It runs in two steps: `top_triplets` needs only the heads' logits and tells whose masks the rest reads
(`Triplets.mask_queries`), `scene_graph_of` finishes with those masks. So the runtime runs the package's mask
heads (the `scene_graph_masks` graph, most of the model's work) on those queries alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moai_edge.engines.errors import require

from .mask_grid import MaskGrid
from .outputs import SceneGraphResult
from .panoptic import softmax_f32
from .registry import ExpertContext, config_from, expert
from .relations import select_relations
from .results import ExpertResults


@dataclass
class SceneGraphConfig:
    scale: tuple[int, int] = (1333, 800)
    size_divisor: int = 32
    mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    std: tuple[float, ...] = (58.395, 57.12, 57.375)
    max_per_img: int = 100
    mask_threshold: float = 0.85
    entity_score: float = 0.5
    relation_score: float = 0.3
    num_things: int = 80
    num_rel: int = 10  # MoAI's make_sgg_prompt: top 10, keep >= 0.8
    keep_score: float = 0.8
    labels: list[str] = field(default_factory=list)  # the 133 COCO panoptic classes
    predicates: list[str] = field(default_factory=list)  # the 56 PSG predicates


HEADS = ("sub_logits", "obj_logits", "rel_logits", "sub_masks", "obj_masks")  # the model outputs post-processing takes
LOGITS = HEADS[:3]
# the `scene_graph` graph's outputs that the `scene_graph_masks` graph takes (export.experts.scene_graph)
MASK_INPUTS = ("features_s32", "features_s16", "features_s8", "features_s4", "sub_attention", "obj_attention")


def scaled_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.imrescale's new (h, w) for a keep-ratio scale (long edge, short edge)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def preprocess_scene_graph(image: np.ndarray, cfg: SceneGraphConfig) -> np.ndarray:
    """HxWx3 uint8 RGB -> (3, Hp, Wp) float32, Hp and Wp multiples of `size_divisor`."""
    cv2 = require("cv2", "ocr")
    h, w = image.shape[:2]
    new_h, new_w = scaled_size(h, w, cfg.scale)
    resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    bgr = resized[..., ::-1].astype(np.float32)  # to_rgb=True swaps the channels of what is already RGB
    x = (bgr - np.asarray(cfg.mean, np.float32)) * (np.float32(1) / np.asarray(cfg.std, np.float32))
    d = cfg.size_divisor
    out = np.zeros((3, -(-new_h // d) * d, -(-new_w // d) * d), np.float32)
    out[:, :new_h, :new_w] = x.transpose(2, 0, 1)
    return out


def mask_size(h: int, w: int, cfg: SceneGraphConfig) -> tuple[int, int]:
    """The reference's mask size: round(img_shape / scale_factor), i.e. the input image's size."""
    new_h, new_w = scaled_size(h, w, cfg.scale)
    return round(new_h / (new_h / h)), round(new_w / (new_w / w))


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest, ties to even), kept as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def dedup_triplets(groups: list[list[int]], s_masks: np.ndarray, o_masks: np.ndarray, n: int,
                   grid: MaskGrid) -> np.ndarray:
    keep = np.ones(n, bool)
    for ids in groups:
        while len(ids) > 1:
            s_iou = grid.iou_over(s_masks[ids[0]], s_masks[ids[1:]])
            o_iou = grid.iou_over(o_masks[ids[0]], o_masks[ids[1:]])
            dup = (s_iou > 0.5) & (o_iou > 0.5)
            keep[np.asarray(ids[1:])[dup]] = False
            ids = [i for i, d in zip(ids[1:], dup) if not d]
    return keep


def group_things(ids: list[int], masks: np.ndarray, grid: MaskGrid) -> list[list[int]]:
    """Instances of one thing class whose masks overlap the group's first by IoU > 0.5 are one entity."""
    groups = []
    while len(ids) > 1:
        iou = grid.iou_over(masks[ids[0]], masks[ids[1:]])
        groups.append([ids[0]] + [i for i, v in zip(ids[1:], iou) if v > 0.5])
        ids = [i for i, v in zip(ids[1:], iou) if not v > 0.5]
    if len(ids) == 1:
        groups.append(ids)
    return groups


@dataclass
class Triplets:
    """One image's top `max_per_img` triplets by predicate score, before masks: enough to tell whose masks the rest of
    post-processing reads. Arrays are per triplet, in rank order; labels are 1-based."""

    query: np.ndarray  # the query each triplet comes from
    s_scores: np.ndarray
    s_labels: np.ndarray
    o_scores: np.ndarray
    o_labels: np.ndarray
    r_dists: np.ndarray
    passes: np.ndarray  # the entity and predicate score cuts
    groups: list[list[int]]  # triplets of the same labels, de-duplicated by mask IoU, up to the last that passes

    @property
    def needs_masks(self) -> np.ndarray:
        """The triplets whose masks are read: those that pass the cuts, and the groups those de-duplicate within."""
        needed = self.passes.copy()
        for ids in self.groups:
            needed[ids] = True
        return needed

    def mask_queries(self) -> np.ndarray:
        """The queries whose masks post-processing reads, ascending."""
        return np.unique(self.query[self.needs_masks])


def top_triplets(sub_logits, obj_logits, rel_logits, cfg: SceneGraphConfig) -> Triplets:
    s_probs, o_probs = softmax_f32(sub_logits)[:, :-1], softmax_f32(obj_logits)[:, :-1]
    r_probs = softmax_f32(rel_logits)
    num_rel = r_probs.shape[-1] - 1
    flat = r_probs[:, 1:].reshape(-1)
    top = np.argsort(-flat, kind="stable")[: min(cfg.max_per_img, flat.size)]
    query = top // num_rel
    s_scores, s_labels = s_probs.max(-1)[query], s_probs.argmax(-1)[query] + 1
    o_scores, o_labels = o_probs.max(-1)[query], o_probs.argmax(-1)[query] + 1
    r_scores, r_labels = flat[top], top % num_rel + 1
    dropped = s_probs.shape[-1] - 1  # meant as "no object", but compared with 1-based labels: class 131 goes
    passes = ((s_labels != dropped) & (o_labels != dropped) & (s_scores > cfg.entity_score)
              & (o_scores > cfg.entity_score) & (r_scores > cfg.relation_score))
    same: dict[tuple[int, int, int], list[int]] = {}
    for k, key in enumerate(zip(s_labels.tolist(), o_labels.tolist(), r_labels.tolist())):
        same.setdefault(key, []).append(k)
    groups = []
    for ids in same.values():  # de-duplication drops only later triplets: those after the last passing one never count
        last = max((i for i, k in enumerate(ids) if passes[k]), default=0)
        if last > 0:
            groups.append(ids[:last + 1])
    return Triplets(query, s_scores, s_labels, o_scores, o_labels, r_probs[query], passes, groups)


def post_process_scene_graph(sub_logits, obj_logits, rel_logits, sub_masks, obj_masks, size: tuple[int, int],
                             cfg: SceneGraphConfig) -> SceneGraphResult:
    """One image's graph outputs, masks of every query included -> entities and relations; `size` is `mask_size`
    of the input image."""
    triplets = top_triplets(sub_logits, obj_logits, rel_logits, cfg)
    queries = triplets.mask_queries()
    return scene_graph_of(triplets, sub_masks[queries], obj_masks[queries], size, cfg)


def scene_graph_of(triplets: Triplets, sub_masks, obj_masks, size: tuple[int, int],
                   cfg: SceneGraphConfig) -> SceneGraphResult:
    """The entities and relations, given the mask logits of `triplets.mask_queries()` (in that order)."""
    t = triplets
    num_rel = t.r_dists.shape[-1] - 1
    empty = SceneGraphResult([1], np.zeros((0, num_rel + 1), np.float32), np.zeros((0, 2), np.int64))
    if not t.passes.any():  # the reference's empty case: one background entity, no relation
        return empty
    used = np.flatnonzero(t.needs_masks)
    rows = np.unique(t.query[used], return_inverse=True)[1].ravel()  # each used triplet's row among mask_queries()
    grid = MaskGrid(sub_masks.shape[-2:], size)  # every step below is per pixel or a pixel count: done on the grid

    def masks_of(logits):  # fp16 -> (nearest resize) -> bf16; binary at sigmoid (in bf16) > bf16(0.85)
        m = to_bf16(logits[rows].astype(np.float16).astype(np.float32)).reshape(len(rows), -1)
        with np.errstate(over="ignore"):  # exp overflow: the sigmoid is 0, as in torch
            return m, to_bf16(1.0 / (1.0 + np.exp(-m))) > to_bf16(np.float32(cfg.mask_threshold))

    s_logit_masks, s_bin = masks_of(sub_masks)
    o_logit_masks, o_bin = masks_of(obj_masks)
    position = {int(k): i for i, k in enumerate(used)}
    groups = [[position[k] for k in ids] for ids in t.groups]
    kept = dedup_triplets(groups, s_bin, o_bin, len(used), grid) & t.passes[used]
    chosen = used[kept]
    r_dists = t.r_dists[chosen]
    labels = np.concatenate([t.s_labels[chosen], t.o_labels[chosen]]) - 1
    if labels.size == 0:  # all that passed were duplicates of triplets that did not
        return empty
    binary = np.concatenate([s_bin[kept], o_bin[kept]])
    logits = np.concatenate([s_logit_masks[kept], o_logit_masks[kept]]).T
    e = np.exp(logits - logits.max(-1, keepdims=True))
    owner = to_bf16(e * (np.float32(1) / e.sum(-1, keepdims=True))).argmax(-1)  # softmax in bf16, first max wins

    entity = np.arange(len(labels))
    stuff, things = {}, {}
    for k, label in enumerate(labels.tolist()):
        (stuff if label >= cfg.num_things else things).setdefault(label, []).append(k)
    merged = [ids for ids in stuff.values() if len(ids) > 1]
    for ids in things.values():
        merged += [g for g in group_things(ids, binary, grid) if len(g) > 1]
    for ids in merged:
        for i in ids:
            owner[owner == i] = ids[0]
            entity[i] = ids[0]
    remaining = np.unique(grid.resized(owner.reshape(1, *grid.grid)))
    pairs = entity.reshape(2, -1).T
    present = np.isin(pairs, remaining).all(1)
    rank = {int(v): i for i, v in enumerate(remaining)}
    pairs = np.vectorize(rank.get, otypes=[np.int64])(pairs[present]) if present.any() else np.zeros((0, 2), np.int64)
    return SceneGraphResult([int(labels[v]) + 1 for v in remaining], r_dists[present], pairs.reshape(-1, 2))


def relations_of(result: SceneGraphResult, cfg: SceneGraphConfig) -> list[tuple[str, str, str]]:
    return select_relations(result.rel_dists, result.rel_pairs, result.labels, cfg.labels, cfg.predicates,
                            num_rel=cfg.num_rel, threshold=cfg.keep_score)


@expert("scene_graph")
class SceneGraphExpert:
    """The trunk graph on images batched by padded shape (the reference never masks padding, see
    export.experts.scene_graph), then the mask heads per image on the queries its post-processing reads."""

    def __init__(self, ctx: ExpertContext):
        self.cfg = config_from(SceneGraphConfig, ctx.section)
        self.trunk = ctx.open(ctx.section["component"])
        self.mask_heads = ctx.open(ctx.section["masks"])

    def run(self, images: list[np.ndarray]) -> list[SceneGraphResult]:
        pixels = [preprocess_scene_graph(img, self.cfg) for img in images]
        results: list[SceneGraphResult | None] = [None] * len(images)
        for shape in dict.fromkeys(p.shape for p in pixels):
            idx = [i for i, p in enumerate(pixels) if p.shape == shape]
            out = self.trunk.run({"pixel_values": np.stack([pixels[i] for i in idx])})
            for row, i in enumerate(idx):
                triplets = top_triplets(*(out[k][row] for k in LOGITS), self.cfg)
                masks = self.masks_of(out, row, triplets.mask_queries())
                graph = scene_graph_of(triplets, *masks, mask_size(*images[i].shape[:2], self.cfg), self.cfg)
                graph.relations = relations_of(graph, self.cfg)
                results[i] = graph
        return results

    def masks_of(self, trunk: dict[str, np.ndarray], row: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The subject and object mask logits (len(queries), H/4, W/4) of one image's queries."""
        if len(queries) == 0:
            empty = np.zeros((0, *trunk["features_s4"].shape[-2:]), np.float32)
            return empty, empty
        feeds = {k: trunk[k][row:row + 1] for k in MASK_INPUTS}
        for k in ("sub_attention", "obj_attention"):
            feeds[k] = np.ascontiguousarray(feeds[k][:, queries])
        out = self.mask_heads.run(feeds)
        return out["sub_masks"][0], out["obj_masks"][0]

    @staticmethod
    def attach(result: ExpertResults, found: SceneGraphResult, section: dict) -> None:
        result.scene_graph = found

    def close(self) -> None:
        self.trunk.close()
        self.mask_heads.close()

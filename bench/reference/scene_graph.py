"""The test oracle for the scene graph's post-processing: OpenPSG's `PSGTrHead._get_bboxes_single`
(mask branch, as in the MoAI repository's copy) and `triplet2Result(eval_pan_rels=True)`, transcribed
in torch with the reference's dtypes and control flow; only the box outputs, which MoAI never reads,
are left out. mmdet cannot be installed here, so this transcription stands in for it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

INSTANCE_OFFSET = 1000


@dataclass
class Candidates:
    """The top relation triplets, as the reference carries them between its steps (torch tensors)."""

    s_labels: torch.Tensor
    o_labels: torch.Tensor
    s_scores: torch.Tensor
    o_scores: torch.Tensor
    r_scores: torch.Tensor
    r_labels: torch.Tensor
    r_dists: torch.Tensor
    s_masks: torch.Tensor  # bool, sigmoid > 0.85
    o_masks: torch.Tensor
    s_mask_logits: torch.Tensor  # bfloat16
    o_mask_logits: torch.Tensor
    no_object: int  # the "no object" label bound the score cut compares against (1-based labels, 0-based bound)


@torch.no_grad()
def reference_scene_graph(s_cls_score, o_cls_score, r_cls_score, s_mask_pred, o_mask_pred, mask_size,
                          num_relations: int, max_per_img: int = 100):
    """Returns (labels, rel_dists, rel_pair_idxes) as numpy, the fields make_sgg_prompt reads."""
    c = top_candidates(s_cls_score, o_cls_score, r_cls_score, s_mask_pred, o_mask_pred, mask_size, num_relations,
                       max_per_img)
    c = deduplicated(c)
    keep = (c.s_labels != c.no_object) & (c.o_labels != c.no_object) & (c.s_scores > 0.5) & (c.o_scores > 0.5) & (
        c.r_scores > 0.3)
    r_dists = c.r_dists[keep]
    labels = torch.cat((c.s_labels[keep], c.o_labels[keep]), 0) - 1
    masks = torch.cat((c.s_masks[keep], c.o_masks[keep]), 0)
    mask_logits = torch.cat((c.s_mask_logits[keep], c.o_mask_logits[keep]), 0)
    if labels.numel() == 0:
        pan_rel_pairs = torch.arange(len(labels), dtype=torch.int).reshape(2, -1).T
        pan_labels = torch.tensor([0])
        return (pan_labels + 1).numpy(), r_dists.numpy(), pan_rel_pairs.numpy()
    return panoptic_relations(labels, masks, mask_logits, r_dists)


def top_candidates(s_cls_score, o_cls_score, r_cls_score, s_mask_pred, o_mask_pred, mask_size, num_relations: int,
                   max_per_img: int) -> Candidates:
    """Softmax heads, the top `max_per_img` of the flattened predicate scores, masks resized in fp16, bfloat16."""
    s_logits = F.softmax(s_cls_score, dim=-1)[..., :-1]
    o_logits = F.softmax(o_cls_score, dim=-1)[..., :-1]
    s_scores, s_labels = s_logits.max(-1)
    o_scores, o_labels = o_logits.max(-1)
    r_lgs = F.softmax(r_cls_score, dim=-1)
    r_logits = r_lgs[..., 1:]
    r_scores, r_indexes = r_logits.reshape(-1).topk(max_per_img)
    r_labels = r_indexes % num_relations + 1
    triplet_index = r_indexes // num_relations
    s_mask_pred = s_mask_pred[triplet_index]
    o_mask_pred = o_mask_pred[triplet_index]
    s_mask_pred = F.interpolate(s_mask_pred.unsqueeze(1).to(torch.float16),
                                size=mask_size).squeeze(1).to(torch.bfloat16)
    o_mask_pred = F.interpolate(o_mask_pred.unsqueeze(1).to(torch.float16),
                                size=mask_size).squeeze(1).to(torch.bfloat16)
    return Candidates(
        s_labels=s_labels[triplet_index] + 1, o_labels=o_labels[triplet_index] + 1, s_scores=s_scores[triplet_index],
        o_scores=o_scores[triplet_index], r_scores=r_scores, r_labels=r_labels,
        r_dists=r_lgs.reshape(-1, num_relations + 1)[triplet_index], s_masks=torch.sigmoid(s_mask_pred) > 0.85,
        o_masks=torch.sigmoid(o_mask_pred) > 0.85, s_mask_logits=s_mask_pred, o_mask_logits=o_mask_pred,
        no_object=s_logits.shape[-1] - 1)


def dedup_triplets(triplets_ids, s_binary_masks, o_binary_masks, keep_tri):
    while len(triplets_ids) > 1:
        base_s_mask = s_binary_masks[triplets_ids[0]].unsqueeze(0)
        base_o_mask = o_binary_masks[triplets_ids[0]].unsqueeze(0)
        other_s_masks = s_binary_masks[triplets_ids[1:]]
        other_o_masks = o_binary_masks[triplets_ids[1:]]
        s_ious = base_s_mask.mm(other_s_masks.transpose(0, 1)) / ((base_s_mask + other_s_masks) > 0).sum(-1)
        o_ious = base_o_mask.mm(other_o_masks.transpose(0, 1)) / ((base_o_mask + other_o_masks) > 0).sum(-1)
        ids_left = []
        for s_iou, o_iou, other_id in zip(s_ious[0], o_ious[0], triplets_ids[1:]):
            if (s_iou > 0.5) & (o_iou > 0.5):
                keep_tri[other_id] = False
            else:
                ids_left.append(other_id)
        triplets_ids = ids_left
    return keep_tri


def deduplicated(c: Candidates) -> Candidates:
    """Triplets of one (subject, object, predicate) class whose masks overlap (IoU > 0.5 both) are dropped."""
    relation_classes = defaultdict(lambda: [])
    for k, (s_l, o_l, r_l) in enumerate(zip(c.s_labels, c.o_labels, c.r_labels)):
        relation_classes[(s_l.item(), o_l.item(), r_l.item())].append(k)
    s_binary_masks = c.s_masks.to(torch.float).flatten(1)
    o_binary_masks = c.o_masks.to(torch.float).flatten(1)
    keep_tri = torch.ones_like(c.r_labels, dtype=torch.bool)
    for triplets_ids in relation_classes.values():
        if len(triplets_ids) > 1:
            keep_tri = dedup_triplets(triplets_ids, s_binary_masks, o_binary_masks, keep_tri)
    kept = {k: v[keep_tri] for k, v in vars(c).items() if isinstance(v, torch.Tensor)}
    return Candidates(**kept, no_object=c.no_object)


def dedup_things(pred_ids, binary_masks, thing_dedup):
    while len(pred_ids) > 1:
        base_mask = binary_masks[pred_ids[0]].unsqueeze(0)
        other_masks = binary_masks[pred_ids[1:]]
        ious = base_mask.mm(other_masks.transpose(0, 1)) / ((base_mask + other_masks) > 0).sum(-1)
        ids_left = []
        thing_dedup[pred_ids[0]].append(pred_ids[0])
        for iou, other_id in zip(ious[0], pred_ids[1:]):
            if iou > 0.5:
                thing_dedup[pred_ids[0]].append(other_id)
            else:
                ids_left.append(other_id)
        pred_ids = ids_left
    if len(pred_ids) == 1:
        thing_dedup[pred_ids[0]].append(pred_ids[0])


def merged_ids(labels, masks, mask_logits):
    """The per-pixel entity id after stuff of one class and overlapping things merge, and each entity's merged id."""
    binary_masks = masks.to(torch.float).flatten(1)
    h, w = masks.shape[-2:]
    stuff_equiv_classes = defaultdict(lambda: [])
    thing_classes = defaultdict(lambda: [])
    thing_dedup = defaultdict(lambda: [])
    for k, label in enumerate(labels):
        if label.item() >= 80:
            stuff_equiv_classes[label.item()].append(k)
        else:
            thing_classes[label.item()].append(k)
    pan_rel_pairs = torch.arange(len(labels), dtype=torch.int)
    for thing_pred_ids in thing_classes.values():
        if len(thing_pred_ids) > 1:
            dedup_things(thing_pred_ids, binary_masks, thing_dedup)
        else:
            thing_dedup[thing_pred_ids[0]].append(thing_pred_ids[0])
    m_id = mask_logits.flatten(1).transpose(0, 1).softmax(-1)
    m_id = m_id.argmax(-1).view(h, w)
    for equiv in [*stuff_equiv_classes.values(), *thing_dedup.values()]:
        if len(equiv) > 1:
            for eq_id in equiv:
                m_id.masked_fill_(m_id.eq(eq_id), equiv[0])
                pan_rel_pairs[eq_id] = equiv[0]
    return m_id, pan_rel_pairs


def panoptic_relations(labels, masks, mask_logits, r_dists):
    """triplet2Result's panoptic step: entities numbered in the order of the ids that own pixels, relations between
    two such entities kept."""
    m_id, pan_rel_pairs = merged_ids(labels, masks, mask_logits)
    m_ids_remain, _ = m_id.unique().sort()
    pan_rel_pairs = pan_rel_pairs.reshape(2, -1).T
    no_obj_filter = torch.zeros(pan_rel_pairs.shape[0], dtype=torch.bool)
    for triplet_id in range(pan_rel_pairs.shape[0]):
        if pan_rel_pairs[triplet_id, 0] in m_ids_remain and pan_rel_pairs[triplet_id, 1] in m_ids_remain:
            no_obj_filter[triplet_id] = True
    pan_rel_pairs = pan_rel_pairs[no_obj_filter]
    r_dists = r_dists[no_obj_filter]
    pan_labels = []
    for i, m_id_remain in enumerate(m_ids_remain):
        pan_labels.append(labels[m_id_remain].unsqueeze(0))
        m_id.masked_fill_(m_id.eq(m_id_remain), i)
        pan_rel_pairs.masked_fill_(pan_rel_pairs.eq(m_id_remain), i)
    pan_labels = torch.cat(pan_labels, 0)
    return (pan_labels + 1).numpy(), r_dists.numpy(), np.asarray(pan_rel_pairs.numpy(), np.int64)

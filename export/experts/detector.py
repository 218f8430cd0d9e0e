"""OWLv2 open-world detection: the text side runs once at export, the image graph takes the cached queries.

The query list never changes between images, so its embeddings (text model, projection, L2 norm,
as `Owlv2Model.forward` computes them) are stored in the package. The image graph returns, per
box, the best query's logit and index (the max is taken inside the graph, so the
boxes x queries logits never leave it) and the boxes in cx, cy, w, h.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moai_edge.engines.errors import InputError

from ..graphs import GraphTarget
from .pretrained import load_pretrained

IMAGE_SIZE = 960


def detector_config(preset: str):
    from transformers import Owlv2Config

    if preset != "tiny":  # OWLv2 B/16 at 960, the reference's architecture
        return Owlv2Config(vision_config=dict(image_size=IMAGE_SIZE, patch_size=16))
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=16)
    return Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)


def build_tiny_detector(out_dir: Path, *, preset: str, seed: int) -> Path:
    """Seeded weights in the published layout, with a CLIP tokenizer trained on the spot."""
    from transformers import Owlv2ForObjectDetection

    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(detector_config(preset))
    head = model.class_head
    with torch.no_grad():  # logits = (cosine - 0.6) * 6: a few boxes, not all, pass MoAI's 0.5 score cut
        head.logit_shift.weight.zero_()
        head.logit_shift.bias.fill_(-0.6)
        head.logit_scale.weight.zero_()
        head.logit_scale.bias.fill_(5.0)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def load_detector(path_or_id: str | Path) -> nn.Module:
    from transformers import Owlv2ForObjectDetection

    return load_pretrained(Owlv2ForObjectDetection, path_or_id, expert="detector").eval()


def tokenize_queries(queries: list[str], vocab_size: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's tokenizer for real checkpoints; for tiny ones (no tokenizer files) a hashed byte tokenizer."""
    ids = torch.zeros((len(queries), max_len), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, q in enumerate(queries):
        toks = [1 + (b % (vocab_size - 2)) for b in q.encode()][: max_len - 1] + [vocab_size - 1]  # eos = the max id
        ids[i, : len(toks)] = torch.tensor(toks)
        mask[i, : len(toks)] = 1
    return ids, mask


def query_tokens(model: nn.Module, queries: list[str],
                 tokenizer_dir: str | Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask as Owlv2Processor makes them (CLIP tokenizer, padded to max_length)."""
    cfg = model.config.text_config
    local = Path(str(tokenizer_dir)) if tokenizer_dir else None
    has_files = (local is None or not local.is_dir()
                 or any((local / f).is_file() for f in ("tokenizer.json", "vocab.json")))
    tok = None
    if tokenizer_dir and has_files:  # (transformers builds an empty tokenizer from a folder without vocabulary files)
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except (OSError, ValueError):
            tok = None
    if tok is None:
        return tokenize_queries(queries, cfg.vocab_size, cfg.max_position_embeddings)
    enc = tok(queries, padding="max_length", max_length=cfg.max_position_embeddings, truncation=True,
              return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def query_embeddings(model: nn.Module, queries: list[str], tokenizer_dir: str | Path | None = None) -> np.ndarray:
    """(Q, D) float32, L2-normalised, exactly as the detector's forward computes its text side."""
    ids, mask = query_tokens(model, queries, tokenizer_dir)
    out = []
    for start in range(0, len(queries), 256):
        text = model.owlv2.text_model(input_ids=ids[start:start + 256],
                                      attention_mask=mask[start:start + 256]).pooler_output
        text = model.owlv2.text_projection(text)
        out.append(text / torch.linalg.norm(text, ord=2, dim=-1, keepdim=True))
    return torch.cat(out).float().numpy()


REPO_LISTS = ("ADE20K_847", "IMAGENET_CLASSES", "PREDICATES")  # the names MoAI's utils/constants.py assigns
# what ast.literal_eval may raise on what is not a literal (the docs' list); nothing it reads is ever run
NOT_LITERAL = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


def read_repo_lists(path: Path) -> dict[str, list[str]]:
    """The REPO_LISTS a MoAI clone's constants file assigns, parsed as literals (the file is never imported)."""
    try:
        source = path.read_text(encoding="utf-8")
        module = ast.parse(source, filename=str(path))
    except (UnicodeDecodeError, *NOT_LITERAL) as exc:  # ValueError: a null byte
        raise InputError(f"{path}: expected Python source assigning literal lists of strings, found a file that does "
                         f"not parse ({exc})") from exc
    lists = {node.targets[0].id: literal_strings(path, source, node) for node in module.body
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
             and node.targets[0].id in REPO_LISTS}
    if not {"ADE20K_847", "IMAGENET_CLASSES"} <= set(lists):
        raise InputError(f"{path}: expected ADE20K_847 and IMAGENET_CLASSES, found {sorted(lists)}")
    return lists


def literal_strings(path: Path, source: str, node: ast.Assign) -> list[str]:
    """The assigned value if it is a literal list of strings, else an InputError naming the file, line and name."""
    try:
        value, found = ast.literal_eval(node.value), ""
    except NOT_LITERAL:
        value, found = None, "code, which is not run: "
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        code = " ".join((ast.get_source_segment(source, node.value) or "").split())
        raise InputError(f"{path}, line {node.lineno}: {node.targets[0].id}: expected a literal list of strings, found "
                         f"{found}{code if len(code) <= 60 else code[:57] + '...'}")
    return value


def read_labels_file(path: Path) -> dict:
    """--labels: a JSON list or object, or UTF-8 text with one query a line."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if text.lstrip()[:1] in "[{" else [line for line in text.splitlines() if line]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: expected a JSON list or object of label strings, or UTF-8 text with one label a "
                         f"line, found {exc}") from exc
    return data if isinstance(data, dict) else {"detector_queries": data}


def read_labels(labels_file: str | Path | None = None, moai_repo: str | Path | None = None) -> dict[str, list[str]]:
    """MoAI's label lists: `detector_queries` (ADE20K_847 + IMAGENET_CLASSES) and, when given, `psg_predicates`.

    `labels_file` is a JSON list or newline-separated file of queries, or a JSON object with those keys
    (the layout of moai_labels.json); `moai_repo` is a local clone of the MoAI repository whose
    `utils/constants.py` lists are read as data (never imported)."""
    if labels_file:
        labels = read_labels_file(Path(labels_file))
    elif moai_repo:
        lists = read_repo_lists(Path(moai_repo) / "utils" / "constants.py")
        labels = {"detector_queries": lists["ADE20K_847"] + lists["IMAGENET_CLASSES"]}
        if "PREDICATES" in lists:
            labels["psg_predicates"] = lists["PREDICATES"]
    else:
        raise InputError("the detector's queries need --labels FILE or --moai-repo DIR")
    for key in ("detector_queries", "psg_predicates"):
        value = labels.get(key)
        if key == "psg_predicates" and value is None:
            continue
        if not value or not isinstance(value, list) or not all(isinstance(q, str) for q in value):
            raise InputError(f"'{key}' must be a non-empty list of strings, found {type(value).__name__}")
    return {k: labels[k] for k in ("detector_queries", "psg_predicates") if k in labels}


class DetectorGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, query_embeds):
        m = self.model
        feature_map = m.image_embedder(pixel_values=pixel_values)[0]  # (B, h, w, D)
        b, h, w, d = feature_map.shape
        image_feats = feature_map.reshape(b, h * w, d)
        queries = query_embeds[None].expand(b, -1, -1)
        logits = m.class_predictor(image_feats, queries, None)[0]  # (B, boxes, Q)
        best, label = logits.max(dim=-1)
        return best, label, m.box_predictor(image_feats, feature_map)


DETECTOR = GraphTarget(
    name="detector", build=DetectorGraph,
    inputs=lambda m, b: {"pixel_values": torch.randn(b, 3, IMAGE_SIZE, IMAGE_SIZE),
                         "query_embeds": torch.nn.functional.normalize(torch.randn(7, m.config.projection_dim),
                                                                       dim=-1)},
    dynamic_axes=lambda m: {"pixel_values": {0: "batch"}, "query_embeds": {0: "queries"}, "best_logit": {0: "batch"},
                            "best_query": {0: "batch"}, "boxes": {0: "batch"}},
    output_names=lambda m: ["best_logit", "best_query", "boxes"],
)

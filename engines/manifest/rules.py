"""What each section of manifest.json may hold: its keys, the required ones, and each value's check (engines.manifest.
fields). Expert sections name their graphs among the components and carry their runtime settings."""

from __future__ import annotations

from dataclasses import MISSING, fields

from ..decoding import STRATEGIES, DecodingConfig
from .fields import (
    NAME,
    NON_NEGATIVE,
    NORM_MEAN,
    NORM_STD,
    NUMBER,
    POSITIVE,
    SIZE_PAIR,
    TEXT,
    Check,
    anything,
    boolean,
    check_section,
    fail,
    integer,
    list_of,
    mapping_of,
    number,
    one_of,
    optional,
    sha256_hex,
    template,
    tensor_spec,
    weight_tensor,
)
from .format import COMPONENT_KINDS, FAMILIES, ModelDims, PreprocessConfig, PromptConfig, SharedWeights

def tensorrt_section(value, where) -> None:
    """{"axis_ranges": {axis: [min, opt, max]}, "graphs": {component: {"build": bool, "reason": text}}}."""
    check_section(value, where, {"axis_ranges": mapping_of(axis_range), "graphs": mapping_of(tensorrt_graph)})


def axis_range(value, where) -> None:
    list_of(POSITIVE, length=3)(value, where)
    if not value[0] <= value[1] <= value[2]:
        fail(where, "[min, opt, max] with min <= opt <= max", value)


def tensorrt_graph(value, where) -> None:
    check_section(value, where, {"build": boolean, "reason": TEXT}, required=("build",))


TOP_LEVEL_RULES: dict[str, Check] = {
    "schema_version": integer(), "family": one_of(FAMILIES), "tensorrt": tensorrt_section,
    **{k: mapping_of(anything) for k in ("source", "components", "shared_weights", "experts")},
    **{k: anything for k in ("model", "tokenizer", "prompts", "preprocess", "generation")}}
TOP_LEVEL_REQUIRED = ("schema_version", "family", "model", "components", "tokenizer", "prompts", "preprocess",
                      "generation")

COMPONENT_RULES = {"file": NAME, "sha256": sha256_hex, "kind": one_of(COMPONENT_KINDS), "inputs": list_of(tensor_spec),
                   "outputs": list_of(tensor_spec), "precision": NAME, "shared_weights": optional(NAME),
                   "extra_files": mapping_of(sha256_hex), "fixed_feeds": mapping_of(boolean)}

SECTION_RULES: dict[type, dict[str, Check]] = {
    SharedWeights: {"file": NAME, "sha256": sha256_hex, "tensors": mapping_of(weight_tensor)},
    ModelDims: {"family": one_of(FAMILIES),
                **{k: POSITIVE for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                                         "vocab_size", "max_context", "image_size", "patch_size", "grid",
                                         "num_image_tokens")},
                **{k: NON_NEGATIVE for k in ("image_token_id", "num_aux_tokens", "num_seg_classes", "num_seg_numbers",
                                             "bos_id")}},
    PromptConfig: {"system": TEXT, "image_token": NAME, "templates": mapping_of(template, nonempty=True),
                   "default_template": NAME, "answer_stop": NAME},
    PreprocessConfig: {"image_size": POSITIVE, "mean": NORM_MEAN, "std": NORM_STD, "scale": number(above=0),
                       "resize": NAME, "antialias": boolean},
    DecodingConfig: {"strategy": one_of(STRATEGIES), "max_new_tokens": POSITIVE, "temperature": number(above=0),
                     "top_p": number(above=0, at_most=1), "top_k": NON_NEGATIVE, "num_beams": POSITIVE,
                     "length_penalty": NUMBER, "eos_token_ids": list_of(NON_NEGATIVE, nonempty=True),
                     "pad_token_id": NON_NEGATIVE, "seed": optional(NON_NEGATIVE)},
}
TOKENIZER_RULES = {"file": NAME, "sha256": sha256_hex, "add_bos": boolean}

# Each expert section names its graphs (and the detector its query embeddings) among the components
# and carries the settings of the runtime's config for it; settings not listed here are ignored.
EXPERT_COMPONENTS = {"panoptic": {"component": "onnx"}, "detector": {"component": "onnx", "queries": "npy"},
                     "scene_graph": {"component": "onnx", "masks": "onnx"},
                     "ocr": {"det": "onnx", "cls": "onnx", "rec": "onnx"}}
EXPERT_SETTINGS: dict[str, Check] = {
    "source": TEXT, "labels": list_of(TEXT, nonempty=True), "predicates": list_of(TEXT, nonempty=True),
    "mean": NORM_MEAN, "std": NORM_STD, "det_mean": NORM_MEAN, "det_std": NORM_STD,
    "scale": SIZE_PAIR, "cls_shape": SIZE_PAIR, "rec_shape": SIZE_PAIR,
    **{k: POSITIVE for k in ("image_size", "target_size", "size_divisor", "max_per_img", "num_things", "num_rel",
                             "limit_side_len", "max_candidates", "min_size", "batch")},
    **{k: NUMBER for k in ("threshold", "mask_threshold", "overlap_mask_area_threshold", "keep_score", "entity_score",
                           "relation_score", "thresh", "box_thresh", "unclip_ratio", "cls_thresh", "drop_score",
                           "min_confidence")},
}


def required_fields(cls) -> set[str]:
    """The fields of dataclass `cls` without a default: the keys its section must have."""
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}

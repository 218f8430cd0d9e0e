"""The precision presets as one validated table: what each preset gives each component, and what it refuses."""

from __future__ import annotations

import re

import pytest

from moai_edge.engines.errors import MoaiEdgeError
from moai_edge.export.precision import (DECODER, PRECISION_PRESETS, ROLE_OF, ROLES, DynamicInt8, Float16, Float32,
                                        PrecisionPreset, PrecisionPresetError, StaticInt8QDQ, WeightOnly, by_name)

# The table as it was before it was data (the module docstring's, and Preset.weight_only()'s head rule):
# preset: decoder, output head, vision tower and experts, compressor and crayon, token embedding
BEFORE = {
    "fp32": ("fp32", "fp32", "fp32", "fp32", "fp32"),
    "fp16": ("fp16", "fp16", "fp16", "fp16", "fp16"),
    "int8": ("int8", "fp32", "int8", "fp32", "fp16"),
    "int4": ("int4", "int8", "int8", "fp32", "fp16"),
    "int4-fp16": ("int4", "int8", "fp16", "fp16", "fp16"),
    "fp16-int8": ("fp16", "fp16", "int8-qdq", "fp16", "fp16"),
}
TOWER = ("vision", "panoptic", "detector", "scene_graph", "scene_graph_masks")
NO_ROLE = ("ocr_det", "ocr_cls", "ocr_rec", "detector_queries")  # PP-OCR as shipped; arrays other than the embedding
FP32, FP16 = Float32(), Float16()
INT4 = {"decoder": WeightOnly(4), "head": WeightOnly(8), "tower": DynamicInt8(), "small": FP32, "embedding": FP16}


@pytest.mark.parametrize("name", list(BEFORE))
def test_every_preset_gives_each_component_the_precision_it_had(name):
    decoder, head, tower, small, embedding = BEFORE[name]
    preset = PRECISION_PRESETS[name]
    expected = {"prefill": decoder, "decode": decoder, "compressor": small, "crayon": small, "embedding": embedding,
                **dict.fromkeys(TOWER, tower), **dict.fromkeys(NO_ROLE, "fp32")}
    assert {c: preset.of(c) for c in expected} == expected
    assert preset.rules["head"].kind == head


def test_weight_only_rules_are_block_32_symmetric_accuracy_level_4():
    """The MatMulNBits settings every weight-only rule had before the table (one WeightOnly for base and head)."""
    rules = [r for p in PRECISION_PRESETS.values() for r in p.rules.values() if isinstance(r, WeightOnly)]
    assert len(rules) == 5 and {(r.block_size, r.symmetric, r.accuracy_level) for r in rules} == {(32, True, 4)}


def test_the_role_of_a_component_is_data():
    assert set(ROLE_OF.values()) <= set(ROLES) and "head" not in ROLE_OF.values()  # the head is inside the decoder
    assert DECODER == ("prefill", "decode")
    preset = PRECISION_PRESETS["int4"]
    assert preset.rule_of("vision") is preset.rules["tower"] and preset.rule_of("ocr_rec") == Float32()


def test_a_component_given_a_role_takes_that_roles_rule(monkeypatch):
    """Mapping a component is one entry in ROLE_OF, no code: the PP-OCR detector mapped to the tower role."""
    preset = PRECISION_PRESETS["int4-fp16"]
    assert preset.of("ocr_det") == "fp32"
    monkeypatch.setitem(ROLE_OF, "ocr_det", "tower")
    assert preset.of("ocr_det") == "fp16"


def refused(**changes) -> str:
    """The message a preset made of INT4 with `changes` is refused with (its name: 'bad')."""
    rules = {role: rule for role, rule in {**INT4, **changes}.items() if rule is not None}
    with pytest.raises(PrecisionPresetError) as err:
        PrecisionPreset("bad", rules)
    assert isinstance(err.value, MoaiEdgeError)
    return str(err.value)


def test_a_head_with_bits_needs_a_weight_only_decoder():
    assert refused(decoder=FP16) == ("precision preset 'bad', role 'head': with a Float16 decoder expected a rule of "
                                     "Float16, found WeightOnly(bits=8, block_size=32, symmetric=True, "
                                     "accuracy_level=4)")
    assert "with a Float32 decoder expected a rule of Float32, found Float16()" in refused(decoder=FP32, head=FP16)


@pytest.mark.parametrize(("changes", "message"), [
    ({"tower": "int8"}, "role 'tower': expected a rule of Float32, Float16, DynamicInt8, StaticInt8QDQ, found 'int8'"),
    ({"embedding": DynamicInt8()}, "role 'embedding': expected a rule of Float32, Float16, found DynamicInt8()"),
    ({"small": StaticInt8QDQ()}, ("role 'small': expected a rule of Float32, Float16, DynamicInt8, found "
                                  "StaticInt8QDQ()")),
    ({"decoder": DynamicInt8()}, ("role 'decoder': expected a rule of Float32, Float16, WeightOnly, found "
                                  "DynamicInt8()")),
    ({"head": None}, ("expected a rule for each role (decoder, head, tower, small, embedding), found no rule for "
                      "'head'")),
    ({"lm_head": FP32}, "found a rule for 'lm_head', which is no role"),
    ({"decoder": WeightOnly(3)}, "role 'decoder': expected bits in (4, 8), found 3"),
    ({"head": WeightOnly(8, block_size=48, accuracy_level=7)},
     ("role 'head': expected a block size that is a power of 2 from 16, found 48; expected an accuracy level from 0 "
      "to 4, found 7")),
])
def test_a_malformed_preset_is_refused_naming_it_the_role_and_what_was_expected(changes, message):
    got = refused(**changes)
    assert got.startswith("precision preset 'bad'") and message in got


def test_a_preset_is_defined_once():
    with pytest.raises(PrecisionPresetError, match=re.escape("precision preset 'int4': expected one definition, "
                                                             "found two")):
        by_name(PRECISION_PRESETS["int4"], PrecisionPreset("int4", dict(INT4)))

"""The family plug-ins: what each family makes of the experts' results."""

from __future__ import annotations

import pytest

from moai_edge.engines.errors import ManifestError
from moai_edge.runtime.families import FAMILIES, family_of
from moai_edge.runtime.samples import sample_image


def check_collavo(manifest, r, aux):
    assert aux.class_map.shape == (manifest.model.grid,) * 2
    assert (aux.segment_text is None) == (not r.panoptic.segments)


def check_moai(manifest, r, aux):
    assert aux.colour_map.shape == (manifest.model.image_size,) * 2 + (3,)
    assert aux.verbalized.endswith("  ")  # relations and OCR parts are empty: their spaces remain


def test_aux_inputs_follow_the_family(package):
    manifest, experts = package
    r = experts.run([sample_image()])[0]
    family = family_of(manifest.family)
    aux = family.aux_inputs(r)
    {"collavo": check_collavo, "moai": check_moai}[manifest.family](manifest, r, aux)
    assert family.display_text(aux) == getattr(aux, {"collavo": "segment_text", "moai": "verbalized"}[manifest.family])


def test_registry_holds_both_families_and_names_the_unknown():
    assert set(FAMILIES) == {"collavo", "moai"}
    with pytest.raises(ManifestError, match="collavo"):
        family_of("llava")


def test_a_crowd_past_the_crayon_number_table_shares_its_last_number(tiny_packages):
    """The reference fails on the 21st instance of a class (its number table has 20); the runtime answers, those
    instances taking the last number; a negative number is still refused."""
    import numpy as np

    from moai_edge.engines.errors import InputError
    from moai_edge.runtime import Pipeline, RuntimeOptions
    from moai_edge.runtime import AuxInputs

    with Pipeline.load(tiny_packages["collavo"], RuntimeOptions(threads=1)) as pipe:
        d = pipe.manifest.model
        cls = np.ones((d.grid, d.grid), np.int64)
        crowd = np.arange(d.grid * d.grid).reshape(d.grid, d.grid) % (d.num_seg_numbers + 8)  # up to 28
        capped = np.minimum(crowd, d.num_seg_numbers - 1)
        image, q = sample_image(), "How many people?"
        got = pipe.ask(image, q, decoding="greedy", max_new_tokens=5, aux=AuxInputs(class_map=cls, number_map=crowd))
        want = pipe.ask(image, q, decoding="greedy", max_new_tokens=5, aux=AuxInputs(class_map=cls, number_map=capped))
        assert crowd.max() >= d.num_seg_numbers and got.tokens == want.tokens
        with pytest.raises(InputError, match="crayon map values out of range"):
            pipe.ask(image, q, max_new_tokens=2, aux=AuxInputs(class_map=cls, number_map=-crowd))

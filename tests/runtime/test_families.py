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

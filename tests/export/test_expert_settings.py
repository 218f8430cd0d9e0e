"""`export_checkpoint(expert_settings=...)` replaces settings of the experts' manifest sections, by name only."""

import pytest

from moai_edge.engines.errors import InputError
from moai_edge.export.package import with_settings


def test_expert_settings_replace_known_settings_and_refuse_unknown_names():
    section = {"detector": {"keep_score": 0.5, "threshold": 0.1}, "scene_graph": {"keep_score": 0.8}}
    with_settings(section, {"detector": {"keep_score": 1.5}})
    assert section == {"detector": {"keep_score": 1.5, "threshold": 0.1}, "scene_graph": {"keep_score": 0.8}}
    with pytest.raises(InputError, match=r"expected an expert of the package .*, found 'ocr'"):
        with_settings(section, {"ocr": {"keep_score": 1.5}})
    with pytest.raises(InputError, match=r"'scene_graph'.*found \['keep_scor'\]"):
        with_settings(section, {"scene_graph": {"keep_scor": 1.5}})
    assert section["scene_graph"] == {"keep_score": 0.8}

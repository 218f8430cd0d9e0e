"""Checkpoints as the reference saves them: CoLLaVO's unused w2 seg pair, corrupt shards, vision towers
other than CLIP-L/14-336 (geometry from the tensors, head count from --vision-config)."""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
from moai_edge.engines.errors import CheckpointError  # noqa: E402
from moai_edge.export.checkpoint import PUBLISHED_VISION, infer_vision, load_checkpoint, load_checkpoint_with_report  # noqa: E402
from moai_edge.export.config import VisionConfig, preset_config  # noqa: E402

W2_SEG = "model.layers.{}.feed_forward.w2.Plora_seg_{}.weight"


def copy_checkpoint(tiny_packages, family, tmp_path):
    return shutil.copytree(tiny_packages[family] / "checkpoint", tmp_path / "ckpt")


def add_tensors(ckpt, tensors: dict) -> None:
    """One more shard, named in the index, holding `tensors`."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(ckpt / "model-extra.safetensors"))
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"].update({k: "model-extra.safetensors" for k in tensors})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))


def without_vision_config(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    del config["vision_config"]
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


# ---- CoLLaVO's w2 seg pair ---------------------------------------------------------------------
def test_collavo_w2_seg_pair_is_loaded_and_reported(tiny_packages):
    from moai_edge.engines.manifest import load_manifest

    ckpt = tiny_packages["collavo"] / "checkpoint"
    layers = json.loads((ckpt / "config.json").read_text())["num_hidden_layers"]
    saved = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    w2_seg = {W2_SEG.format(i, ab) for i in range(layers) for ab in "AB"}
    assert w2_seg <= set(saved)  # the tiny factory writes the reference's layout
    model, _, report = load_checkpoint_with_report(ckpt)
    assert set(report.ignored) == w2_seg
    assert "never uses" in " ".join(report.notes)
    assert not any(k.startswith("model.layers.0.feed_forward.w2.Plora_seg") for k in model.state_dict())
    assert load_manifest(tiny_packages["collavo"]).source["load_notes"] == report.notes


@pytest.mark.parametrize("family, extra", [
    ("collavo", "model.layers.0.feed_forward.w2.Plora_extra.weight"),
    ("collavo", "model.layers.99.feed_forward.w2.Plora_seg_A.weight"),  # no such layer
    ("moai", W2_SEG.format(0, "A")),  # MoAI has no seg branch at all
])
def test_other_unexpected_tensors_stay_an_error(tiny_packages, tmp_path, family, extra):
    ckpt = copy_checkpoint(tiny_packages, family, tmp_path)
    add_tensors(ckpt, {extra: torch.zeros(8, 128, dtype=torch.float16)})
    with pytest.raises(CheckpointError, match=f"unexpected.*{re.escape(extra)}"):
        load_checkpoint(ckpt)


def test_w2_seg_pair_of_the_wrong_shape_is_named(tiny_packages, tmp_path):
    ckpt = copy_checkpoint(tiny_packages, "collavo", tmp_path)
    add_tensors(ckpt, {W2_SEG.format(1, "B"): torch.zeros(3, 3, dtype=torch.float16)})
    with pytest.raises(CheckpointError,
                       match=r"w2\.Plora_seg_B\.weight': expected shape \(64, 8\), checkpoint has \(3, 3\)"):
        load_checkpoint(ckpt)


# ---- corrupt files ----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_shard_is_a_checkpoint_error_naming_the_file(tiny_packages, tmp_path, damage):
    ckpt = copy_checkpoint(tiny_packages, "moai", tmp_path)
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(b"\x00garbage, not safetensors" * 40 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"'{re.escape(str(shard))}' is not a readable safetensors file"):
        load_checkpoint(ckpt)


def test_corrupt_config_json_names_the_file(tiny_packages, tmp_path):
    ckpt = copy_checkpoint(tiny_packages, "moai", tmp_path)
    (ckpt / "config.json").write_text('{"vocab_size": 3')
    with pytest.raises(CheckpointError, match="config.json' is not readable JSON"):
        load_checkpoint(ckpt)


# ---- vision towers other than CLIP-L/14-336 -----------------------------------------------------
def test_vision_geometry_is_read_from_the_tensors(tiny_packages, tmp_path):
    ckpt = without_vision_config(copy_checkpoint(tiny_packages, "collavo", tmp_path))
    tiny_vision = preset_config("collavo", "tiny", vocab_size=300).vision
    model, _ = load_checkpoint(ckpt, vision_config={"num_heads": 2, "image_size": 112})
    assert model.cfg.vision == tiny_vision
    model, _ = load_checkpoint(ckpt, vision_config={"num_heads": 2})  # the published target size
    assert model.cfg.vision == VisionConfig(**{**vars(tiny_vision), "image_size": 490})
    with pytest.raises(CheckpointError, match=r"32 wide, not CLIP-L's 1024.*--vision-config"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("given, message", [
    ({"num_heads": 2, "hidden_size": 48}, r"hidden_size: --vision-config gives 48, the checkpoint's tensors have 32"),
    ({"num_heads": 2, "num_layers": 5}, r"num_layers: --vision-config gives 5, the checkpoint's tensors have 2"),
    ({"num_heads": 5}, r"num_heads 5 does not divide the tower's width 32"),
    ({"num_heads": "2"}, r"num_heads must be a positive int, found '2'"),
    ({"heads": 2}, r"unknown vision field 'heads'"),
])
def test_inconsistent_vision_config_names_both_values(tiny_packages, tmp_path, given, message):
    ckpt = without_vision_config(copy_checkpoint(tiny_packages, "moai", tmp_path))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt, vision_config=given)


def test_config_json_and_option_must_agree(tiny_packages):
    with pytest.raises(CheckpointError, match=r"config.json's vision_config gives 2, --vision-config gives 4"):
        load_checkpoint(tiny_packages["moai"] / "checkpoint", vision_config={"num_heads": 4})


def test_published_tower_needs_no_flag():
    """No vit tensors (the reference loads CLIP-L by hub id) or CLIP-L's: the published config, no head count asked."""
    clip_l = {"vit.vision_tower.vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
              "vit.vision_tower.vision_model.embeddings.position_embedding.weight": (577, 1024),
              **{f"vit.vision_tower.vision_model.encoder.layers.{i}.mlp.fc1.weight": (4096, 1024) for i in range(24)}}
    assert infer_vision({}, {}, None) == PUBLISHED_VISION == infer_vision({}, clip_l, None)
    with pytest.raises(CheckpointError,
                       match=r"num_heads: --vision-config gives 12, 'openai/clip-vit-large-patch14-336' .* has 16"):
        infer_vision({}, {}, {"num_heads": 12})


def test_export_passes_vision_config_through(tiny_packages, tmp_path, monkeypatch):
    from moai_edge.export import build
    from moai_edge.runtime import cli

    ckpt = without_vision_config(copy_checkpoint(tiny_packages, "moai", tmp_path))
    seen = {}

    def fake_build_package(model, *, source, **_):
        seen.update(vision=model.cfg.vision, source=source)
        return SimpleNamespace(family=model.cfg.family, components={}, source={})

    monkeypatch.setattr(build, "build_package", fake_build_package)
    args = cli.build_parser().parse_args(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "pkg"),
                                          "--no-experts", "--vision-config", '{"num_heads": 2, "image_size": 112}'])
    assert args.func(args) == 0
    assert seen["vision"].num_heads == 2 and seen["vision"].image_size == 112
    assert seen["source"]["vision_config"] == {"num_heads": 2, "image_size": 112}  # for bench's reloads
    with pytest.raises(CheckpointError, match="--vision-config: expected a JSON object"):
        build.export_checkpoint(ckpt, tmp_path / "pkg", vision_config="num_heads=2")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_scene_graph_checkpoint_names_the_file(tmp_path, damage):
    from moai_edge.export.experts.scene_graph import load_scene_graph

    path = tmp_path / "psgtr_r50_epoch_60.pth"
    torch.save({"state_dict": {"query_embed.weight": torch.zeros(4, 8)}}, path)
    data = path.read_bytes()
    path.write_bytes(b"\x80\x02garbage" * 40 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: not loadable .* truncated or corrupt") as no:
        load_scene_graph(path)
    assert "\n" not in str(no.value) and "weights_only=False" not in str(no.value)  # one line, without that advice


def tiny_expert(expert: str, folder):
    """A tiny Hugging Face expert checkpoint in its published layout, and its loader."""
    from moai_edge.export.experts import detector, panoptic
    from moai_edge.export.experts.labels import COCO_PANOPTIC_CLASSES

    if expert == "panoptic":
        built = panoptic.build_tiny_panoptic(folder, family="moai", preset="tiny", labels=COCO_PANOPTIC_CLASSES, seed=0)
        return built, panoptic.load_panoptic
    return detector.build_tiny_detector(folder, preset="tiny", seed=0), detector.load_detector


@pytest.mark.parametrize("expert", ["panoptic", "detector"])
def test_corrupt_expert_safetensors_is_a_checkpoint_error(tmp_path, expert):
    folder, load = tiny_expert(expert, tmp_path / expert)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage" * 8)
    with pytest.raises(CheckpointError, match=expert):
        load(folder)


class Payload:
    """Unpickled, it would create `path`: torch.load(weights_only=True) refuses it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("expert", ["panoptic", "detector"])
def test_a_pytorch_model_bin_of_tensors_loads_and_any_other_is_refused_by_name_unrun(tmp_path, expert):
    from safetensors.torch import load_file

    folder, load = tiny_expert(expert, tmp_path / expert)
    expected = load(folder).state_dict()
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    weights, marker = folder / "pytorch_model.bin", tmp_path / "unpickled"
    torch.save(state, weights)
    loaded = load(folder).state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())
    torch.save({**state, "args": Payload(marker)}, weights)
    data = weights.read_bytes()
    for found in ("a pickled ", "a file torch cannot read"):
        with pytest.raises(CheckpointError) as refused:
            load(folder)
        message = str(refused.value)
        assert message.startswith(f"{expert} checkpoint '{weights}': expected model.safetensors, or a "
                                  f"pytorch_model.bin of tensors only, found {found}") and "\n" not in message, message
        weights.write_bytes(data[: len(data) // 2])  # then truncated
    assert not marker.exists()

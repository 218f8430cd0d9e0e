"""The trained world's models: training every part (`train_world`) and exporting a package from the checkpoints
shipped in this folder (`export_world`, behind `moai-edge export --world moai|collavo`).

    python -m moai_edge.export.world.build --out export/world/checkpoints   # retrain everything (~30 min, 2 cores)

`checkpoints/` holds what training wrote, in the published layouts the loaders read:
    panoptic/   the Mask2Former expert (config.json + model.safetensors, `save_pretrained`)
    moai/       the MoAI backbone (config.json, fp16 safetensors shards + index, tokenizer.model)
    collavo/    the CoLLaVO backbone (same layout)
    training.json   seconds per part and the settings
The detector and scene-graph experts are not trained on the world: they are the project's seeded tiny
checkpoints, rebuilt on the spot from `seed`, and silenced (`SILENCED`: score cuts nothing reaches, so MoAI reads
the reference's "nothing detected" text from them, never random labels and relations).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..build import export_checkpoint
from ..experts import detector as owl
from ..experts import scene_graph as psgtr
from ..families import family_of
from ..tiny import build_tiny_checkpoint
from .render import PANOPTIC_CATEGORIES
from .tokenizer import train_world_tokenizer
from .train_backbone import BackboneRecipe, train_backbone
from .train_panoptic import PanopticRecipe, train_panoptic

CHECKPOINTS = Path(__file__).parent / "checkpoints"
WORLD_FAMILIES = ("moai", "collavo")
WORLD_PARTS = ("panoptic", *WORLD_FAMILIES)
PANOPTIC_STEPS = 2400
PANOPTIC_BATCH = 8
# MoAI's four experts cost far more an image than CoLLaVO's one: CoLLaVO sees more images
RECIPES = {"moai": BackboneRecipe(images=1000, steps=1200), "collavo": BackboneRecipe(images=2000, steps=1200)}
NOTHING = 1.5  # above any probability: a score cut that keeps nothing
SILENCED = {"detector": {"keep_score": NOTHING}, "scene_graph": {"keep_score": NOTHING}}


def silenced(family: str) -> dict[str, dict]:
    """The settings that silence the untrained experts the family packages."""
    return {name: settings for name, settings in SILENCED.items() if name in family_of(family).experts}


def world_experts(family: str, panoptic: Path, work: Path, *, seed: int = 0) -> dict:
    """export_checkpoint's `experts`: the trained panoptic expert, and for a family that packages them the seeded
    tiny detector (asked for the world's labels) and scene graph. OCR is the real PP-OCR."""
    experts: dict = {"panoptic": str(panoptic)}
    packaged = family_of(family).experts
    if "detector" in packaged:
        experts.update(detector=str(owl.build_tiny_detector(work / "detector", preset="tiny", seed=seed)),
                       queries=list(PANOPTIC_CATEGORIES))
    if "scene_graph" in packaged:
        experts["scene_graph"] = str(psgtr.build_tiny_scene_graph(work / "scene_graph", preset="tiny", seed=seed))
    return experts


def export_world(family: str, out_dir: Path, *, checkpoints: Path = CHECKPOINTS, validate: bool = True, seed: int = 0,
                 precision: str = "fp32"):
    """A package from the shipped (or given) world checkpoints, exported and validated like any checkpoint."""
    out_dir = Path(out_dir)
    experts = world_experts(family, checkpoints / "panoptic", out_dir / "experts", seed=seed)
    manifest = export_checkpoint(checkpoints / family, out_dir, family=family, validate=validate, experts=experts,
                                 precision=precision, expert_settings=silenced(family))
    manifest.source.update({"world": family, "seed": seed})
    manifest.save(out_dir)
    return manifest


def train_world(out_dir: Path = CHECKPOINTS, *, seed: int = 0, threads: int = 2, parts=WORLD_PARTS,
                panoptic_steps: int = PANOPTIC_STEPS, panoptic_recipe: PanopticRecipe = PanopticRecipe(),
                recipes: dict[str, BackboneRecipe] = RECIPES, log=print) -> dict:
    """Train the panoptic expert, then each backbone on the experts' results; returns the seconds per part.
    `parts` may leave the panoptic expert out to retrain backbones on the one already in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = out_dir / "training.json"
    seconds = json.loads(record.read_text())["seconds"] if record.is_file() else {}
    if "panoptic" in parts:
        start = time.perf_counter()
        train_panoptic(out_dir / "panoptic", steps=panoptic_steps, batch_size=PANOPTIC_BATCH, seed=seed,
                       threads=threads, recipe=panoptic_recipe, log_every=100, check_every=400, log=log)
        seconds["panoptic"] = round(time.perf_counter() - start, 1)
    for family in (p for p in parts if p in WORLD_FAMILIES):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            initial = build_tiny_checkpoint(family, work / "initial", preset="world", seed=seed,
                                            train_tokenizer=train_world_tokenizer)
            experts = world_experts(family, out_dir / "panoptic", work / "experts", seed=seed)
            export_checkpoint(initial, work / "package", family=family, validate=False, experts=experts,
                              expert_settings=silenced(family))
            train_backbone(initial, work / "package", out_dir / family, recipe=recipes[family], seed=seed,
                           threads=threads, log_every=100, log=log)
        seconds[family] = round(time.perf_counter() - start, 1)
    record.write_text(json.dumps({"seconds": seconds, "seed": seed, "threads": threads,
                                  "panoptic_steps": panoptic_steps, "panoptic_recipe": asdict(panoptic_recipe),
                                  "backbones": {k: asdict(r) for k, r in recipes.items()}}, indent=1) + "\n")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train the tiny world's panoptic expert and both backbones")
    parser.add_argument("--out", type=Path, default=CHECKPOINTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", nargs="+", default=list(WORLD_PARTS), choices=WORLD_PARTS,
                        help="what to train (default: all; backbones alone reuse the panoptic expert in --out)")
    args = parser.parse_args(argv)
    print(train_world(args.out, seed=args.seed, threads=args.threads, parts=args.parts))


if __name__ == "__main__":
    main()

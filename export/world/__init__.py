"""The tiny world: seeded images of coloured shapes on a wall and floor, an optional sign, their panoptic
ground truth and their questions and answers (numpy + Pillow only, no torch).

    from moai_edge.export.world import generate, questions_for
    import random

    world = generate(7)                 # WorldImage: .scene, .image (H,W,3) uint8, .panoptic, .png_bytes()
    for question_type, question, answer in questions_for(world.scene, random.Random(7)):
        ...

`scene` samples what an image holds (seed ranges and sign vocabularies are documented there), `render`
draws it (and defines the panoptic categories), `questions` holds the templates and the canonical
description.

The trained world (these need torch): `train_panoptic` (the Mask2Former expert on the world's masks),
`tokenizer` (capital letters as pieces, so unseen sign words can be copied), `train_backbone` (CoLLaVO or
MoAI on the questions, with the packaged experts' results), and `build` (all parts: `train_world`; a package
from the checkpoints shipped in `checkpoints/`: `export_world`, behind `moai-edge export --world`).
"""

from .questions import (COLOUR_TEMPLATE, COUNT_TEMPLATE, DESCRIBE_QUESTION, NO_SIGN_ANSWER, QA, QUESTION_TYPES,
                        SIGN_QUESTION, describe_counts, describe_scene, questions_for)
from .render import (PANOPTIC_CATEGORIES, STUFF_CATEGORIES, THING_CATEGORIES, PanopticSegment, PanopticTruth,
                     WorldImage, encode_png, generate, render_scene)
from .scene import (COLOURS, DEFAULT_WORLD, HELD_OUT_SEED_START, HELD_OUT_SEEDS, HELD_OUT_WORDS, SHAPES,
                    TRAINING_SEEDS, TRAINING_WORDS, Scene, Sign, Style, WorldConfig, WorldError, WorldObject,
                    is_held_out_seed, sample_scene)

__all__ = ["COLOURS", "COLOUR_TEMPLATE", "COUNT_TEMPLATE", "DEFAULT_WORLD", "DESCRIBE_QUESTION", "HELD_OUT_SEEDS",
           "HELD_OUT_SEED_START", "HELD_OUT_WORDS", "NO_SIGN_ANSWER", "PANOPTIC_CATEGORIES", "QA", "QUESTION_TYPES",
           "SHAPES", "SIGN_QUESTION", "STUFF_CATEGORIES", "THING_CATEGORIES", "TRAINING_SEEDS", "TRAINING_WORDS",
           "PanopticSegment", "PanopticTruth", "Scene", "Sign", "Style", "WorldConfig", "WorldError", "WorldImage",
           "WorldObject", "describe_counts", "describe_scene", "encode_png", "generate", "is_held_out_seed",
           "questions_for", "render_scene", "sample_scene"]

"""What `moai-edge demo` does; the other verbs are in runtime/commands.py."""

from __future__ import annotations

import json
from pathlib import Path

from moai_edge.engines.errors import require

from .commands import runtime_options
from .request import Request

DEMO_IMAGES = 4
DEMO_MAX_NEW_TOKENS = 48  # the longest description is ~40 tokens


def cmd_demo(args) -> int:
    """The built-in default: the trained tiny-world MoAI package (exported on the spot from the checkpoints shipped
    with moai-edge) captions a few held-out world images and answers their questions, each beside the truth."""
    from PIL import Image

    from moai_edge.bench.accuracy.eval import image_seeds, score_answer, world_items
    from moai_edge.export.world import DESCRIBE_QUESTION

    from .caption.job import CaptionJob
    from .caption.captioner import Captioner
    from .pipeline import Pipeline

    out = Path(args.engine)
    if not (out / "manifest.json").is_file():
        require("torch", "export")
        from moai_edge.export.world.build import export_world

        print(f"building the tiny-world MoAI engine package in {out} from the shipped checkpoints ...")
        export_world("moai", out)
    images = out.parent / "demo-images"
    images.mkdir(parents=True, exist_ok=True)
    worlds = [(f"world_{items[0].image_seed}.png", image, items)
              for image, items in world_items(image_seeds(0, DEMO_IMAGES))]
    for name, image, _ in worlds:
        Image.fromarray(image).save(images / name)
    captions = out.parent / "demo-captions.jsonl"
    captions.unlink(missing_ok=True)
    with Pipeline.load(out, runtime_options(args)) as pipe:
        decoding = pipe.decoding("greedy", max_new_tokens=args.max_new_tokens or DEMO_MAX_NEW_TOKENS)
        with CaptionJob.open(images, captions, resume=False) as job:
            summary = job.run(Captioner(pipe, question=DESCRIBE_QUESTION, batch_size=2, decoding=decoding))
        records = {r["id"]: r for r in map(json.loads, captions.read_text().splitlines())}
        print(f"{len(records)} held-out world images (never seen in training) in {images}, captions -> {captions}\n")
        right = asked = 0
        for name, image, items in worlds:
            aux = pipe.aux_inputs(image)  # the experts once per image, for all its questions
            results = pipe.run([Request(image, it.question, decoding, id=it.id, aux=aux) for it in items])
            print(f"{name}: {records[name].get('caption', records[name].get('error'))!r}")
            for it, r in zip(items, results):
                ok = score_answer(it.question_type, it.expected, r.answer)
                right, asked = right + ok, asked + 1
                print(f"  {'ok' if ok else 'XX'}  {it.question:<40} {r.answer.strip()!r:<28} truth {it.expected!r}")
    print(f"\n{right}/{asked} answers right; captioning ran at {summary.images_per_s:.2f} images/s (batch 2). "
          f"`moai-edge eval --engine {out}` measures accuracy on 100 images.")
    return 0

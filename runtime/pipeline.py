"""The whole model as users call it, as one composition:

    image -> load once -> (experts || vision tower) -> family aux inputs -> backbone generate -> Result

    with Pipeline.load("pkg/tiny-moai", threads=2) as pipe:
        result = pipe.ask("photo.jpg", "Describe this image.", on_token=lambda row, token: print(token))

`observe` is the first half on its own (images -> features, expert results, the family's inputs), `score` the
second half's logits (greedy, or teacher-forced along given tokens): what tools built on a package use instead of
its parts.

With `RuntimeOptions.concurrent`, the experts of an image and the vision tower run at the same time
on a thread pool: on CPU each expert engine has one intra-op thread; on a GPU each engine has its own
CUDA stream (engines/registry). How many at once: at most one per core, and with `memory_budget_mb` no
more than fit (runtime.experts.schedule). After each call the freed activations go back to the system
(runtime.memory.release_freed). With `image_cache_mb`, a question about an image seen before reuses its features
and expert results (runtime.image_cache). Calls are serialized by a lock, so one Pipeline may be shared between
threads.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import EngineError, InputError
from moai_edge.engines.manifest import Manifest, load_manifest
from moai_edge.engines.options import RuntimeOptions, usable_cores

from .asking import Asking
from .contracts import AuxInputs, OnToken, ShouldStop
from .decoding.backbone import Backbone, Scored
from .decoding.prompts import PromptIds
from .decoding.text_stream import TextStream
from .decoding.tokenizer import Tokenizer
from .experts.results import ExpertResults
from .experts.runner import Experts
from .experts.schedule import StageSchedule
from .families import family_of
from .image_cache import ImageCache, image_key
from .memory import release_freed
from .observation import Observation
from .request import Request, Result
from .timer import Timer
from .vision import VisionTower


class Pipeline(Asking):
    def __init__(self, manifest: Manifest, options: RuntimeOptions | None = None):
        self.manifest, self.options = manifest, options or RuntimeOptions()
        self.family = family_of(manifest.family)
        self.closed = False
        self.vision = VisionTower(manifest, self.options)
        self.backbone = Backbone(manifest, self.options, self.family, self.vision.encode_pixels)
        concurrent = self.options.concurrent
        self.experts = Experts(manifest, self.options, threads=1 if concurrent else None) if manifest.experts else None
        # experts are compute-bound on CPU: batching them gains nothing while their activations grow with the batch
        self.expert_batch = self.options.expert_batch or (1 if self.options.device == "cpu" else None)
        workers = (len(self.experts.steps()) if self.experts else 0) + 1  # + the vision tower
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="expert") if concurrent else None
        self.schedule = StageSchedule(cores=usable_cores(), budget_mb=self.options.memory_budget_mb)
        cache_mb = self.options.image_cache_mb
        self.image_cache = ImageCache(cache_mb * 2**20) if cache_mb else None
        release_freed()  # what loading parsed and dropped (graph protos, copies) goes back before the first answer
        self.lock = threading.RLock()  # close() waits for a call in flight; a token callback may close

    @classmethod
    def load(cls, engine_dir: str | Path, options: RuntimeOptions | None = None, *, device: str | None = None,
             threads: int | None = None) -> "Pipeline":
        """`device` / `threads` replace those fields of `options` (default RuntimeOptions())."""
        options = options or RuntimeOptions()
        changes = {k: v for k, v in (("device", device), ("threads", threads)) if v is not None}
        options = options.replace(**changes) if changes else options
        return cls(load_manifest(engine_dir, verify_hashes=options.verify_hashes), options)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
            for part in (self.experts, self.backbone, self.vision):
                if part is not None:
                    part.close()

    # ---- asking ------------------------------------------------------------------------------
    def run(self, requests: list[Request], *, on_token: OnToken | None = None,
            should_stop: ShouldStop | None = None) -> list[Result]:
        """Any bad image raises (see Captioner for error isolation). `on_token` and `should_stop` rows index
        `requests`; `should_stop(row)` is asked between decoding steps (every strategy, beam search included)."""
        with self.lock:
            self.check_open()
            t0, timer = time.perf_counter(), Timer()
            seen = self.observe([r.image for r in requests], experts=[r.aux is None for r in requests], timer=timer)
            aux = [req.aux if req.aux is not None else s.aux or AuxInputs() for req, s in zip(requests, seen)]
            features = np.stack([s.features for s in seen])
            answers = self.generate(requests, features, aux, timer, on_token, should_stop)
            release_freed()
            total = (time.perf_counter() - t0) * 1e3
        return [Result(req.id, ans.answer, ans.tokens, s.results.to_json() if s.results is not None else {},
                       self.family.display_text(a), {**timer.ms, "total": total}, ans.kv_cache_bytes, ans.prompt_tokens,
                       timer.spans)
                for req, s, a, ans in zip(requests, seen, aux, answers)]

    def check_open(self) -> None:
        if self.closed:
            raise EngineError("this Pipeline is closed: load the package again to ask more")

    # ---- a package's parts, for tools built on it ------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        return self.backbone.tokenizer

    def prompt(self, question: str, aux: AuxInputs | None = None, *, template: str | None = None) -> PromptIds:
        """The prompt ids the backbone gives the decoder for `question` (the family's prefix from `aux` included)."""
        return self.backbone.prompt(question, aux or AuxInputs(), template)

    def text_stream(self) -> TextStream:
        """Turns one row's streamed token ids into the pieces of its answer (see `ask`'s `on_token`)."""
        return TextStream(self.backbone.tokenizer, self.manifest.prompts)

    def score(self, observation: Observation, question: str, *, tokens: list[int] | None = None,
              max_new_tokens: int | None = None, template: str | None = None) -> Scored:
        """The answer's tokens with the logits (T, V) before each: greedy (until an end token or `max_new_tokens`,
        default the package's), or along `tokens` (teacher-forced). `observation` may come from another package of
        the same family: its features and aux inputs are all that is used."""
        with self.lock:
            self.check_open()
            n = max_new_tokens or self.manifest.generation.max_new_tokens
            return self.backbone.score(observation.features, observation.aux or AuxInputs(), question, tokens=tokens,
                                       max_new_tokens=n, template=template)

    def aux_inputs(self, image) -> AuxInputs:
        """The family's inputs from the experts on one image. Give them as `Request.aux` to ask several questions
        about the same image without running the experts again."""
        with self.lock:
            self.check_open()
            pixels = self.expert_input(image)
            if self.experts is None:
                return AuxInputs()
            gate = self.schedule.gate(list(self.experts.steps()))
            result = self.experts.run([pixels], pool=self.pool, max_batch=self.expert_batch, gate=gate)[0]
            return self.family.aux_inputs(result)

    def observe(self, images: list, *, experts: bool | list[bool] = True,
                timer: Timer | None = None) -> list[Observation]:
        """Per image (a path, bytes, PIL image or HxWx3 uint8 array): its features, and where `experts` asks its
        expert results and the family inputs made from them; what `run` itself uses. From the image cache where it
        holds them, else the experts and the vision tower run (and the cache keeps them)."""
        with self.lock:
            self.check_open()
            timer = timer or Timer()
            wanted = experts if isinstance(experts, list) else [experts] * len(images)
            if len(wanted) != len(images):
                raise InputError(f"observe: expected one experts flag per image, found {len(wanted)} for "
                                 f"{len(images)} images")
            with timer("load"):
                pixels = [self.expert_input(image) for image in images]
            return self.observe_pixels(pixels, wanted, timer)

    def observe_pixels(self, pixels: list[np.ndarray], wanted: list[bool], timer: Timer) -> list[Observation]:
        keys = [image_key(p) for p in pixels] if self.image_cache is not None else [None] * len(pixels)
        need = [w and self.experts is not None for w in wanted]
        out = [self.image_cache.get(k, need_experts=n) if k else None for k, n in zip(keys, need)]
        first: dict = {}  # with the cache on, an image that appears twice in one batch is seen once
        todo = [i for i, s in enumerate(out)
                if s is None and (keys[i] is None or first.setdefault((keys[i], need[i]), i) == i)]
        if todo:
            results, features = self.see([pixels[i] for i in todo], [wanted[i] for i in todo], timer)
            with timer("verbalize"):
                for i, r, f in zip(todo, results, features):
                    out[i] = Observation(f, r, self.family.aux_inputs(r) if r is not None else None)
                    if keys[i]:
                        self.image_cache.put(keys[i], out[i])
        return [s if s is not None else out[first[(keys[i], need[i])]] for i, s in enumerate(out)]

    def see(self, pixels: list[np.ndarray], wanted: list[bool], timer: Timer) -> tuple[list, np.ndarray]:
        """The experts (on the images that want them) and the vision tower: independent, so side by side when
        concurrent. Returns each image's ExpertResults (or None) and the image features."""
        results: list[ExpertResults | None] = [None] * len(pixels)
        todo = [i for i, w in enumerate(wanted) if w] if self.experts is not None else []
        gate = self.schedule.gate(["vision", *(self.experts.steps() if todo else ())])

        def vision():
            with gate.stage("vision"), timer("vision"):
                return self.vision.encode(pixels)

        if not todo:
            return results, vision()
        features = self.pool.submit(vision) if self.pool is not None else None
        with timer("experts"):
            found = self.experts.run([pixels[i] for i in todo], pool=self.pool, timings=timer.ms,
                                     max_batch=self.expert_batch, gate=gate)
        for i, r in zip(todo, found):
            results[i] = r
        return results, features.result() if features is not None else vision()

    def generate(self, requests: list[Request], features, aux, timer: Timer, on_token: OnToken | None,
                 should_stop: ShouldStop | None):
        """Rows that share a decoding config and template are one backbone batch."""
        def key(i):
            r = requests[i]
            return repr(r.decoding or self.manifest.generation), r.template or ""

        answers = [None] * len(requests)
        for _, group in groupby(sorted(range(len(requests)), key=key), key=key):
            rows = list(group)
            first = requests[rows[0]]
            cfg = self.decoding(first.decoding)
            stream = (lambda row, token, rows=rows: on_token(rows[row], token)) if on_token else None
            stop = (lambda row, rows=rows: should_stop(rows[row])) if should_stop else None
            out = self.backbone.generate(features[rows], [aux[i] for i in rows], [requests[i].question for i in rows],
                                         cfg, template=first.template, on_token=stream, should_stop=stop, timer=timer)
            for i, ans in zip(rows, out):
                answers[i] = ans
        return answers

"""Backends by name: `open_engine(manifest, component, options)` opens a graph with the backend `options.backend` names.

A new backend is one file holding one class registered here, imported by engines/__init__.py:

    @backend("tensorrt")
    class TrtEngine:
        devices = ("cuda",)
        @classmethod
        def check(cls, options: RuntimeOptions) -> None: ...   # EngineError unless it can run here
        @classmethod
        def open(cls, graph: Graph, options: RuntimeOptions, *, shared: SharedWeights | None) -> Engine: ...
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Protocol

from . import integrity, tensorrt
from .branch import BranchEngine, SharedEngine
from .errors import EngineError, IntegrityError, ManifestError
from .manifest import Manifest
from .options import RuntimeOptions
from .protocol import Engine
from .shared_weights import SharedWeights


@dataclass(frozen=True)
class Graph:
    """What a backend opens: a graph file, with its bytes already read and hashed where it belongs to a package."""

    name: str
    path: Path  # the file; external data it names lies in its folder
    data: bytes | None = None  # the verified bytes to open; None: the backend reads `path` itself
    external_data: bool = False  # the graph names files beside it (shared weights, extra_files)
    stamp: integrity.Stamp | None = None  # the version of `path` that was hashed, when the backend reads it itself
    external_files: tuple[Path, ...] = ()  # the external data files the graph names (the manifest's extra_files)
    tensorrt: tensorrt.TensorrtPlan | None = None  # what the manifest says of it for TensorRT (device "tensorrt")


class Backend(Protocol):
    devices: tuple[str, ...]  # the RuntimeOptions.device values it can serve

    @classmethod
    def check(cls, options: RuntimeOptions) -> None: ...

    @classmethod
    def open(cls, graph: Graph, options: RuntimeOptions, *, shared: SharedWeights | None) -> Engine: ...


BACKENDS: dict[str, type[Backend]] = {}


def backend(name: str):
    """Class decorator: register a backend under `name`, the value of RuntimeOptions.backend that selects it."""
    def register(cls):
        if BACKENDS.get(name, cls) is not cls:
            raise EngineError(f"backend '{name}': expected one class for this name, found {BACKENDS[name].__name__} "
                              f"and {cls.__name__}")
        BACKENDS[name] = cls
        return cls
    return register


def backend_for(options: RuntimeOptions) -> type[Backend]:
    """The registered backend `options` select, after it has checked that it can serve `options.device` here."""
    cls = BACKENDS.get(options.backend)
    if cls is None:
        raise EngineError(f"backend: expected one of {sorted(BACKENDS)}, found {options.backend!r}")
    if options.device not in cls.devices:
        raise EngineError(f"backend '{options.backend}' cannot run on device '{options.device}'; "
                          f"it serves {list(cls.devices)}")
    cls.check(options)
    return cls


def overridden(options: RuntimeOptions, threads: int | None, memory_arena: bool | None) -> RuntimeOptions:
    changes = {k: v for k, v in (("threads", threads), ("memory_arena", memory_arena)) if v is not None}
    return options.replace(**changes) if changes else options


def open_engine(manifest: Manifest, component: str, options: RuntimeOptions, *, threads: int | None = None,
                memory_arena: bool | None = None) -> Engine:
    """The package's graph `component`, with its shared weights, on the backend and device `options` name.
    `threads` / `memory_arena` override the options for this one engine (experts: 1 thread, no arena). Files are
    hashed (once per process) unless the manifest or the options turn hashing off. With `options.record_feeds`, the
    engine's feeds are recorded (engines.recording)."""
    engine = open_package_engine(manifest, component, options, threads=threads, memory_arena=memory_arena)
    return options.record_feeds.tap(engine, component) if options.record_feeds is not None else engine


def open_package_engine(manifest: Manifest, component: str, options: RuntimeOptions, *, threads: int | None,
                        memory_arena: bool | None) -> Engine:
    cls = backend_for(options)
    options = overridden(options, threads, memory_arena)
    c = manifest.component(component)
    if c.kind != "onnx":
        raise EngineError(f"component '{component}': expected a graph (kind 'onnx'), found kind '{c.kind}'; "
                          f"arrays are read with Manifest.load_array")
    verify = options.verify_hashes and manifest.verify_hashes
    if c.fixed_feeds:
        return open_branch(cls, manifest, component, options, verify=verify)
    shared = shared_weights(manifest, c.shared_weights, verify=verify) if c.shared_weights else None
    return opened(cls, package_graph(manifest, component, verify=verify, options=options), options, shared=shared)


def opened(cls: type[Backend], graph: Graph, options: RuntimeOptions, *, shared: SharedWeights | None) -> Engine:
    """`cls.open`, then, for a graph the backend read by path, the check that it read the version that was hashed."""
    engine = cls.open(graph, options, shared=shared)
    if graph.stamp is not None:
        try:
            graph.stamp.check_unchanged(f"engine package file '{graph.path.name}' ({graph.name})")
        except IntegrityError:
            engine.close()
            raise
    return engine


_branch_lock = threading.Lock()
_branch_engines: dict[tuple, SharedEngine] = {}


def open_branch(cls: type[Backend], manifest: Manifest, component: str, options: RuntimeOptions, *,
                verify: bool) -> BranchEngine:
    """A component that is one branch of a graph file (engines.branch): the file's engine is opened once for every
    branch of it open at the same time, with the same options."""
    c = manifest.component(component)
    path, _, label = manifest.file_check(c.file)
    try:
        st = path.stat()
    except OSError as exc:
        raise ManifestError(f"{label} cannot be read: {exc}") from exc
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, options)  # a changed file is opened anew
    with _branch_lock:
        shared = _branch_engines.get(key)
        if shared is None:  # read and hashed here, once
            graph = package_graph(manifest, component, verify=verify, options=options)
            engine = opened(cls, replace(graph, name=path.stem), options.replace(check_inputs=False), shared=None)
            shared = _branch_engines[key] = SharedEngine(engine)

        def forget():
            with _branch_lock:
                if _branch_engines.get(key) is shared:
                    del _branch_engines[key]

        return BranchEngine(shared, name=component, inputs=c.inputs, outputs=c.outputs, fixed_feeds=c.fixed_feeds,
                            check_inputs=options.check_inputs, on_close=forget)


def open_file(path: str | Path, options: RuntimeOptions, *, name: str | None = None, threads: int | None = None,
              memory_arena: bool | None = None) -> Engine:
    """A bare graph file outside any package (export's check of a graph before packaging it); nothing is hashed."""
    cls = backend_for(options)
    options = overridden(options, threads, memory_arena)
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"graph file '{path}': expected an ONNX file, found nothing there (or not a regular file)")
    return cls.open(Graph(name or path.stem, path, external_data=True), options, shared=None)


def package_graph(manifest: Manifest, component: str, *, verify: bool, options: RuntimeOptions | None = None) -> Graph:
    """The component's graph, hashed. A self-contained graph is hashed through a read-only mapping and opened by
    path: onnxruntime given the bytes of a graph holds about twice what it holds when it reads the file (a 300 MB
    int8 vision tower: 609 MB against 321 MB resident, besides the bytes themselves). A graph with external data
    is handed over as bytes; its external data files (`extra_files`) are hashed here, and the backend reads them
    from the package folder."""
    c = manifest.component(component)
    extra = []
    for rel in c.extra_files:
        path, expected, label = manifest.file_check(rel)
        extra.append(path)
        if verify and expected is not None:
            integrity.map_verified(path, expected, label)
    path, expected, label = manifest.file_check(c.file)
    external = bool(c.extra_files or c.shared_weights)
    plan = tensorrt.tensorrt_plan(manifest, component) if options is not None and options.device == "tensorrt" else None
    if external:
        return Graph(component, path, integrity.read_verified(path, expected if verify else None, label),
                     external_data=True, external_files=tuple(extra), tensorrt=plan)
    _, stamp = integrity.map_verified(path, expected if verify else None, label)
    return Graph(component, path, stamp=stamp, tensorrt=plan)


_shared_lock = threading.Lock()
_shared: weakref.WeakValueDictionary[tuple, SharedWeights] = weakref.WeakValueDictionary()


def shared_weights(manifest: Manifest, key: str, *, verify: bool) -> SharedWeights:
    """The package's shared weights `key`, opened once and handed to every graph naming them while any engine holds
    them (keyed by the file as it is now and the tensors the manifest lists in it)."""
    spec, where = manifest.shared_weights[key], f"shared_weights.{key}"
    path = manifest.path(spec.file, f"{where}.file")
    try:
        st = path.stat()
    except OSError as exc:
        raise ManifestError(f"engine package file '{spec.file}' ({where}.file) cannot be read: {exc}") from exc
    identity = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, json.dumps(spec.tensors, sort_keys=True))
    with _shared_lock:
        found = _shared.get(identity)
        if found is None:
            found = _shared[identity] = SharedWeights.open(manifest.root, spec, where=where, verify=verify)
        elif verify:
            found.verify(spec.sha256, f"engine package file '{spec.file}' ({where}.file)")
    return found


def synchronize(engines: Iterable[Engine]) -> None:
    """Wait for the device work of `engines` (their CUDA streams); a no-op for engines on the CPU."""
    for engine in engines:
        sync = getattr(engine, "synchronize", None)
        if sync is not None:
            sync()

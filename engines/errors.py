"""The one exception hierarchy of moai-edge. Every message says what was expected and what was found."""


class MoaiEdgeError(Exception):
    """Base class of every error moai-edge raises on purpose."""


class ManifestError(MoaiEdgeError):
    """The engine package's manifest is missing, of another schema, or names a bad file."""


class IntegrityError(ManifestError):
    """A file of the engine package does not match the sha256 recorded in the manifest."""


class EngineError(MoaiEdgeError):
    """An engine could not be loaded or run."""


class InputError(MoaiEdgeError):
    """A feed or argument does not match what was expected (name, dtype, shape, value)."""


class ImageError(InputError):
    """An image could not be read or decoded."""


class ContextError(InputError):
    """A prompt and the tokens asked for do not fit the package's context."""


class CheckpointError(MoaiEdgeError):
    """A checkpoint could not be found or does not have the expected layout."""


class ExportValidationError(MoaiEdgeError):
    """An exported graph disagrees with the PyTorch model beyond tolerance."""


class MissingExtraError(MoaiEdgeError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require_installed(module: str, extra: str) -> None:
    """Fail early, naming the extra, when `module` is not installed, without importing it (and its memory)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"'{module}' is needed here but is not installed: pip install 'moai-edge[{extra}]'")


def require(module: str, extra: str):
    """Import an optional heavy module lazily, or fail naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"'{module}' is needed here but is not installed: pip install 'moai-edge[{extra}]'"
        ) from exc

"""Every path the manifest names stays inside the package folder, checked before any file is read."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import ManifestError
from .fields import fail, refuse


def package_file(root: Path, relative, where: str) -> Path:
    """root/relative after checking it stays inside root: relative, no '..', no symlink leading out. Reads nothing."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        fail(where, "a relative path inside the package folder", relative)
    as_posix, as_windows = PurePosixPath(relative), PureWindowsPath(relative)
    if as_posix.is_absolute() or as_windows.is_absolute() or as_windows.drive or as_windows.root:
        fail(where, "a path relative to the package folder", relative)
    if ".." in as_windows.parts:  # both separators
        fail(where, "a path inside the package folder, without '..'", relative)
    base = Path(root).resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ManifestError(f"manifest field '{where}': path '{relative}' cannot be resolved: {exc}") from exc
    if not target.is_relative_to(base):
        refuse(where, f"a file inside the package folder {base}", f"'{relative}' leading to {target} (a symlink out)")
    return Path(root) / relative

"""What a caption job reads: the image files of a folder, or the paths listed in a text file.

Every file found is either an input or a counted skip with its reason, never silently dropped:
- a folder is walked recursively without following symlinked folders (a loop cannot trap the scan);
  files with an image extension are inputs, even when they are dangling symlinks or symlink loops
  (they become error records that say so); other files are skipped, counted by extension;
- a list file gives one path per line, relative to the list's folder; a path listed twice is
  captioned once and the repeat is counted.
Names that are not valid UTF-8 are kept losslessly as Python's surrogate escapes.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from moai_edge.engines.errors import InputError

# Photo formats Pillow decodes (AVIF from Pillow 11.2; HEIC/HEIF with the pillow-heif plugin, else an error record).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp", ".tif",
                    ".tiff", ".avif", ".avifs", ".heic", ".heif", ".jp2", ".j2k", ".qoi", ".tga", ".ppm", ".pgm",
                    ".pbm", ".pnm", ".ico"}


@dataclass
class InputScan:
    items: list[tuple[str, Path]]  # (id, path) in job order
    skipped: Counter = field(default_factory=Counter)  # reason -> count of files found but not inputs

    def skipped_text(self) -> str:
        if not self.skipped:
            return ""
        parts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return f"{sum(self.skipped.values())} skipped ({parts})"


def collect_inputs(source: str | Path) -> InputScan:
    source = Path(source)
    if source.is_dir():
        return scan_folder(source)
    if source.is_file():
        return read_list_file(source)
    raise InputError(f"caption input '{source}' is neither a folder nor a text file of image paths")


def scan_folder(root: Path) -> InputScan:
    scan = InputScan([])
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if os.path.islink(os.path.join(folder, d)):
                scan.skipped["symlinked folder, not followed"] += 1
        for name in filenames:
            path = Path(folder, name)
            ext = path.suffix.lower()
            if ext in IMAGE_EXTENSIONS:
                scan.items.append((path.relative_to(root).as_posix(), path))
            else:
                scan.skipped[f"not an image extension ({ext or 'none'})"] += 1
    scan.items.sort(key=lambda item: item[0])
    return scan


def read_list_file(listing: Path) -> InputScan:
    scan, seen = InputScan([]), set()
    text = listing.read_bytes().decode("utf-8", errors="surrogateescape")
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if line in seen:
            scan.skipped["listed again"] += 1
            continue
        seen.add(line)
        scan.items.append((line, Path(line) if Path(line).is_absolute() else listing.parent / line))
    return scan

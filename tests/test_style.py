"""The source passes `ruff check` as pyproject.toml configures it (pycodestyle and pyflakes at 120 columns)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff_command() -> list[str] | None:
    """This interpreter's ruff (moai-edge[test] installs it), else one on PATH; None where there is none."""
    try:
        from ruff.__main__ import find_ruff_bin

        return [os.fsdecode(find_ruff_bin())]
    except (ImportError, FileNotFoundError):
        found = shutil.which("ruff")
        return [found] if found else None


def test_ruff_check_reports_nothing():
    command = ruff_command()
    if command is None:
        pytest.skip("ruff is not installed: pip install 'moai-edge[test]' (or ruff>=0.6)")
    out = subprocess.run([*command, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, f"`ruff check .` in {ROOT} found:\n{out.stdout}{out.stderr}"

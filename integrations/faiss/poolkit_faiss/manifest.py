"""The JSON manifest every saved index or store starts with: what wrote it, in which format version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_manifest(path: Path, format_name: str, format_version: int, what: str) -> dict[str, Any]:
    """The manifest at ``path``; ``FileNotFoundError`` when there is none, ``ValueError`` when another format
    or version wrote it (``what`` names the kind of folder in the messages)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a {what} folder (its save writes it)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != format_name or manifest.get("format_version") != format_version:
        raise ValueError(f"{path.parent} is not a {format_name} v{format_version} {what}")
    return manifest

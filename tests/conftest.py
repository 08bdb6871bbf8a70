"""Shared fixtures: tiny random checkpoints (built once per session) and the benchmark corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poolkit.testing import add_sentence_transformers_files, build_tiny_checkpoint, write_config_overrides

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "bench_corpus.jsonl"


def load_corpus(n: int | None = None) -> list[str]:
    texts = []
    with open(CORPUS, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            if n is not None and len(texts) >= n:
                break
    return texts


@pytest.fixture(scope="session")
def corpus() -> Callable[[int | None], list[str]]:
    return load_corpus


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny(kind, **st_options)`` → path of a cached tiny checkpoint."""
    cache: dict[tuple[Any, ...], Path] = {}

    def make(kind: str, padding_side: str = "right", config: dict[str, Any] | None = None, **st: Any) -> Path:
        """``config``: keys patched into config.json (e.g. ``matryoshka_dimensions``): a checkpoint of its own,
        so that no test changes a checkpoint another test shares."""
        key = (kind, padding_side, repr(sorted((config or {}).items())), repr(sorted(st.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(kind.replace("-", "_"))
            build_tiny_checkpoint(path, kind, padding_side=padding_side)  # type: ignore[arg-type]
            if st:
                add_sentence_transformers_files(path, **st)
            if config:
                write_config_overrides(path, **config)
            cache[key] = path
        return cache[key]

    return make

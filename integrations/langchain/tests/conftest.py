"""Shared fixtures: tiny random checkpoints, the default model, and ``poolkit serve`` processes.

Every engine is loaded once per session; each server (the default model, and a
tiny model with query/document prompts) is started once, only by the tests that need it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
CORPUS = REPO_ROOT.parent / "shared" / "data" / "bench_corpus.jsonl"
SERVER_API_KEY = "sk-langchain-poolkit-test"


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from poolkit.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("lc-encoder") / "model", "encoder")


@pytest.fixture(scope="session")
def tiny_encoder_llm(tiny_encoder_path: Path) -> Any:
    from poolkit import LLM

    return LLM(str(tiny_encoder_path), dtype="float32")


@pytest.fixture(scope="session")
def tiny_mean_llm(tiny_encoder_path: Path) -> Any:
    """The tiny encoder with MEAN pooling: random CLS vectors are nearly parallel, mean-pooled ones spread out."""
    from poolkit import LLM

    return LLM(str(tiny_encoder_path), dtype="float32", override_pooler_config={"pooling_type": "MEAN"})


@pytest.fixture(scope="session")
def tiny_st_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Sentence-Transformers encoder with query/document prompts, Matryoshka-enabled."""
    from poolkit.testing import add_sentence_transformers_files, build_tiny_checkpoint, write_config_overrides

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("lc-st") / "model", "encoder", seed=3)
    add_sentence_transformers_files(path, pooling="mean", prompts={"query": "query: ", "document": "doc: "})
    write_config_overrides(path, matryoshka_dimensions=[32, 16, 8])
    return path


@pytest.fixture(scope="session")
def tiny_st_llm(tiny_st_path: Path) -> Any:
    from poolkit import LLM

    return LLM(str(tiny_st_path), dtype="float32")


PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="session")
def tiny_prompted_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Sentence-Transformers encoder with ``PROMPTS`` whose pooling leaves the prompt's tokens out
    (``include_prompt=False``): gluing the prompt onto the texts by hand gives other vectors than
    ``LLM.embed(prompt_name=...)``, so tests can tell who applied the prompt."""
    from poolkit.testing import add_sentence_transformers_files, build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("lc-prompted") / "model", "encoder", seed=5)
    add_sentence_transformers_files(path, pooling="mean", prompts=PROMPTS, include_prompt=False)
    return path


@pytest.fixture(scope="session")
def tiny_prompted_llm(tiny_prompted_path: Path) -> Any:
    from poolkit import LLM

    return LLM(str(tiny_prompted_path), dtype="float32")


@pytest.fixture(scope="session")
def tiny_cross_encoder_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from poolkit import LLM
    from poolkit.testing import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("lc-cross") / "model", "cross-encoder", seed=7)
    return LLM(str(path), dtype="float32")


@pytest.fixture(scope="session")
def default_llm() -> Any:
    """The bundled all-MiniLM-L6-v2, loaded once for the whole session.

    float32, like the test server: bf16 results move by ~1e-3 with batch composition, which
    would blur the "server == in-process" comparisons.
    """
    from poolkit import LLM

    return LLM(dtype="float32")


@pytest.fixture(scope="session")
def server_api_key() -> str:
    return SERVER_API_KEY


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serve(model: str, log_path: Path, *extra_args: str) -> Iterator[str]:
    """``poolkit serve MODEL`` (float32, with the test API key) on a free loopback port; yields its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLKIT_")}
    cmd = [
        sys.executable,
        "-m",
        "poolkit.entrypoints.cli",
        "serve",
        model,
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        SERVER_API_KEY,
        "--disable-access-log",
        "--uvicorn-log-level",
        "warning",
        *extra_args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"poolkit serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"poolkit serve did not become healthy in 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)  # polling a starting process, not waiting for a result
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``poolkit serve default`` on a free loopback port, with an API key."""
    with _serve("default", tmp_path_factory.mktemp("lc-server") / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def prompted_served_name() -> str:
    return "tiny-prompted"


@pytest.fixture(scope="session")
def prompted_server_url(
    tiny_prompted_path: Path, prompted_served_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``poolkit serve`` of the tiny prompted model (as ``prompted_served_name``), with an API key."""
    log_path = tmp_path_factory.mktemp("lc-prompted-server") / "server.log"
    with _serve(str(tiny_prompted_path), log_path, "--served-model-name", prompted_served_name) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_chunkable_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Sentence-Transformers encoder with mean pooling (normalized): chunk vectors of a long input
    merge exactly for MEAN, so ``chunk_long_inputs`` is checked against ``LLM.embed`` on it."""
    from poolkit.testing import add_sentence_transformers_files, build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("lc-chunkable") / "model", "encoder", seed=11)
    add_sentence_transformers_files(path, pooling="mean")
    return path


@pytest.fixture(scope="session")
def chunkable_server_url(tiny_chunkable_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``poolkit serve`` of the tiny mean-pooling model, with an API key."""
    with _serve(str(tiny_chunkable_path), tmp_path_factory.mktemp("lc-chunkable-server") / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def chunking_server_url(tiny_chunkable_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same model served with chunked processing on in its pooler config (the server's default then)."""
    log_path = tmp_path_factory.mktemp("lc-chunking-server") / "server.log"
    with _serve(str(tiny_chunkable_path), log_path, "--override-pooler-config",
                '{"enable_chunked_processing": true}') as url:
        yield url


def load_corpus(limit: int | None = None) -> list[dict[str, Any]]:
    import json

    rows = []
    with open(CORPUS, encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


@pytest.fixture(scope="session")
def corpus_loader() -> Any:
    if not CORPUS.exists():
        pytest.fail(f"corpus not found at {CORPUS}")
    return load_corpus

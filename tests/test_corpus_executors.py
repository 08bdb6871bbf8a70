"""Corpus executors as plugins: the built-in ``local``, the integrations' entry points, an unknown
name, and a third-party executor registered through (fake) ``poolkit.executors`` entry points."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from poolkit import LLM
from poolkit.corpus import (
    ENTRY_POINT_GROUP,
    CorpusExecutor,
    LocalExecutor,
    available_executors,
    embed_corpus,
    embedding_matrix,
    load_executor,
    make_executor,
    read_corpus_embeddings,
)
from poolkit.entrypoints.embed import main

pytestmark = pytest.mark.unit

PLUGIN_MODULE = "poolkit_test_executor_plugin"
PLUGIN_SOURCE = '''
from poolkit.corpus import LocalExecutor

CALLS = []


class RecordingExecutor(LocalExecutor):
    """A third-party executor: records each call of its run hook, then embeds locally."""

    name = "recording"

    def run(self, job, pending, recorder):
        CALLS.append({"executor": self, "pending": [spec.index for spec in pending], "job": job})
        super().run(job, pending, recorder)


class NotAnExecutor:
    pass
'''


def _installed(distribution: str) -> bool:
    try:
        md.distribution(distribution)
    except md.PackageNotFoundError:
        return False
    return True


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def encoder(tiny) -> str:
    return str(tiny("encoder"))


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin module on sys.path and entry points that name it (besides the really installed ones)."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = md.entry_points
    fakes = [md.EntryPoint("recording", f"{PLUGIN_MODULE}:RecordingExecutor", ENTRY_POINT_GROUP),
             md.EntryPoint("broken", f"{PLUGIN_MODULE}:NotAnExecutor", ENTRY_POINT_GROUP),
             md.EntryPoint("missing", "poolkit_no_such_module:Executor", ENTRY_POINT_GROUP)]

    def entry_points(**params):
        found = list(real(**params))
        return found + fakes if params.get("group") == ENTRY_POINT_GROUP else found

    monkeypatch.setattr(md, "entry_points", entry_points)
    yield
    module = sys.modules.pop(PLUGIN_MODULE, None)
    assert module is not None, "the plugin was imported (only) when asked for"


def test_local_is_built_in():
    assert available_executors()[0] == "local"
    assert load_executor("local") is LocalExecutor
    executor = make_executor("local", device="cpu")
    assert isinstance(executor, LocalExecutor) and executor.device == "cpu" and executor.name == "local"
    assert make_executor(executor) is executor
    with pytest.raises(NotImplementedError, match="must implement run"):
        CorpusExecutor().run(None, [], None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, distribution, target", [
    ("ray", "poolkit-ray", "poolkit_ray.corpus.RayExecutor"),
    ("lightning", "poolkit-lightning", "poolkit_lightning.corpus.LightningExecutor"),
])
def test_installed_integrations_register_their_executors(name, distribution, target):
    if not _installed(distribution):
        pytest.skip(f"{distribution} is not installed")
    assert name in available_executors(), f"{distribution} is installed but registers no {name!r} executor"
    cls = load_executor(name)
    assert issubclass(cls, CorpusExecutor) and cls.name == name
    assert f"{cls.__module__}.{cls.__qualname__}" == target


def test_unknown_executor_lists_the_installed_ones(tmp_path, capsys):
    installed = ", ".join(available_executors())
    with pytest.raises(ValueError, match=f"Unknown executor 'nope'; installed: {installed} "):
        load_executor("nope")
    src = _write_jsonl(tmp_path / "c.jsonl", ["a text"])
    with pytest.raises(ValueError, match="Unknown executor 'nope'"):
        embed_corpus(src, tmp_path / "out", engine="nope", progress=False)
    assert not (tmp_path / "out").exists(), "nothing is touched before the executor is found"
    with pytest.raises(SystemExit) as exit_info:
        main([str(src), "--out", str(tmp_path / "out"), "--engine", "nope"])
    assert exit_info.value.code == 2
    assert f"unknown executor 'nope'; installed: {installed}" in capsys.readouterr().err


def test_third_party_executor_is_discovered_and_its_hook_runs(plugin, encoder, tmp_path, capsys):
    assert "recording" in available_executors() and PLUGIN_MODULE not in sys.modules, "listed, not imported"
    texts = [f"document number {i} about executors and plugins" for i in range(25)]
    src = _write_jsonl(tmp_path / "c.jsonl", texts)

    summary = embed_corpus(src, tmp_path / "out", model=encoder, engine="recording", shard_size=10, device="cpu",
                           progress=False)
    calls = sys.modules[PLUGIN_MODULE].CALLS
    assert len(calls) == 1 and calls[0]["pending"] == [0, 1, 2]
    executor = calls[0]["executor"]
    assert type(executor).__name__ == "RecordingExecutor" and executor.device == "cpu" and executor.workers is None
    assert calls[0]["job"].model == encoder
    assert summary.engine == "recording" and summary.complete and summary.rows == 25
    llm = LLM(encoder, task="embed", device="cpu")
    reference = np.stack([o.outputs.numpy() for o in llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)])
    np.testing.assert_allclose(embedding_matrix(read_corpus_embeddings(tmp_path / "out")), reference, atol=1e-5)

    # The CLI accepts the plugin's name too; a rerun finds nothing pending and does not call the hook.
    assert main([str(src), "--model", encoder, "--out", str(tmp_path / "out"), "--shard-size", "10",
                 "--engine", "recording", "--no-progress"]) == 0
    assert "with engine recording" in capsys.readouterr().out and len(calls) == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [run["engine"] for run in manifest["runs"]] == ["recording", "recording"]


def test_bad_plugins_are_reported(plugin):
    with pytest.raises(TypeError, match=r"'broken'.*not a subclass of poolkit.corpus.CorpusExecutor"):
        load_executor("broken")
    with pytest.raises(ImportError, match=r"'missing'.*failed to import"):
        load_executor("missing")

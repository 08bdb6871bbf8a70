"""``poolkit embed --image-column``: a corpus of images (file paths, or bytes in Parquet) embedded by an
image-text model (a tiny random CLIP) into the same shards as texts, equal to ``LLM.embed`` of the images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poolkit import LLM
from poolkit.corpus import (
    MANIFEST_NAME,
    CorpusExecutor,
    CorpusJob,
    CorpusSource,
    EmbedOptions,
    embed_corpus,
    embedding_matrix,
    read_corpus_embeddings,
)
from poolkit.entrypoints.embed import main
from poolkit.inputs import ImagePrompt
from poolkit.testing import draw_shape as drawing

ATOL = 1e-5
ENGINE = {"dtype": "float32"}
SHAPES = ["circle", "square", "lines", "triangle", "dot"]
COLORS = ["red", "blue", "green", "orange", "purple"]


@pytest.fixture(scope="module")
def clip(tiny) -> str:
    return str(tiny("clip"))


@pytest.fixture(scope="module")
def llm(clip) -> LLM:
    return LLM(clip, dtype="float32")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus folder: ``img/`` with the drawings, next to the input files that name them."""
    root = tmp_path_factory.mktemp("image-corpus")
    (root / "img").mkdir()
    for i, (shape, color) in enumerate(zip(SHAPES, COLORS)):
        drawing(shape, color).save(root / "img" / f"{i}-{shape}.png")
    return root


@pytest.fixture(scope="module")
def files(folder: Path) -> list[Path]:
    return sorted((folder / "img").iterdir())


@pytest.fixture(scope="module")
def reference(llm: LLM, files: list[Path]) -> np.ndarray:
    outputs = llm.embed([{"multi_modal_data": {"image": f}} for f in files], use_tqdm=False)
    return np.stack([o.outputs.numpy() for o in outputs])


def _paths(folder: Path, files: list[Path]) -> list[str]:
    """Relative paths, but the last one absolute: both must resolve to the same files."""
    return [str(f.relative_to(folder)) for f in files[:-1]] + [str(files[-1])]


def _write_parquet(path: Path, column: str, values: list, ids: list | None = None) -> Path:
    data = {column: values} if ids is None else {"id": ids, column: values}
    pq.write_table(pa.table(data), path, row_group_size=2)
    return path


def _write_jsonl(path: Path, column: str, values: list, ids: list) -> Path:
    with open(path, "w") as fh:
        for key, value in zip(ids, values):
            fh.write(json.dumps({"id": key, column: value, "caption": f"row {key}"}) + "\n")
    return path


@pytest.mark.unit
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_image_column_equals_llm_embed(fmt, clip, folder, files, reference, tmp_path):
    ids = [f"img-{i}" for i in range(len(files))]
    if fmt == "parquet":
        src = _write_parquet(folder / "corpus.parquet", "path", _paths(folder, files), ids)
    else:
        src = _write_jsonl(folder / "corpus.jsonl", "path", _paths(folder, files), ids)
    out = tmp_path / "out"
    summary = embed_corpus(src, out, model=clip, image_column="path", shard_size=2, batch_size=3, progress=False,
                           engine_kwargs=ENGINE)
    assert summary.complete and summary.rows == len(files) and summary.shards_total == 3
    assert summary.truncated == 0 and summary.tokens == 0  # images have no text tokens
    table = read_corpus_embeddings(out)
    assert table.column("id").to_pylist() == ids
    assert table.column("truncated").to_pylist() == [False] * len(files)
    np.testing.assert_allclose(embedding_matrix(table), reference, atol=ATOL)
    job = json.loads((out / MANIFEST_NAME).read_text())["job"]
    assert job["image_column"] == "path" and job["text_column"] is None

    # A rerun finds every shard done; the text job over the same file is a different job.
    again = embed_corpus(src, out, model=clip, image_column="path", shard_size=2, progress=False, engine_kwargs=ENGINE)
    assert again.rows == 0 and again.shards_skipped == 3
    with pytest.raises(ValueError, match="different job"):
        embed_corpus(src, out, model=clip, text_column="path", shard_size=2, progress=False, engine_kwargs=ENGINE)


@pytest.mark.unit
def test_parquet_image_bytes_and_relative_paths_follow_the_input(clip, files, reference, tmp_path):
    """Encoded bytes in a binary column embed like the files; relative paths are read from the input's folder,
    whatever the working directory (the corpus folder may move)."""
    src = _write_parquet(tmp_path / "bytes.parquet", "image", [f.read_bytes() for f in files])
    summary = embed_corpus(src, tmp_path / "out", model=clip, image_column="image", progress=False,
                           engine_kwargs=ENGINE)
    assert summary.complete
    table = read_corpus_embeddings(tmp_path / "out")
    assert table.column("id").to_pylist() == list(range(len(files)))  # no id column: row numbers
    np.testing.assert_allclose(embedding_matrix(table), reference, atol=ATOL)

    moved = tmp_path / "moved"
    (moved / "pics").mkdir(parents=True)
    for f in files:
        (moved / "pics" / f.name).write_bytes(f.read_bytes())
    src = _write_jsonl(moved / "c.jsonl", "file", [f"pics/{f.name}" for f in files], list(range(len(files))))
    source = CorpusSource.open(src, image_column="file", shard_size=10)
    _, prompts = source.read(source.shards[0])
    assert all(isinstance(p, ImagePrompt) and p.image == moved.resolve() / "pics" / f.name
               for p, f in zip(prompts, files))
    embed_corpus(src, tmp_path / "out2", model=clip, image_column="file", progress=False, engine_kwargs=ENGINE)
    np.testing.assert_allclose(embedding_matrix(read_corpus_embeddings(tmp_path / "out2")), reference, atol=ATOL)


@pytest.mark.unit
def test_cli_image_column(clip, folder, files, reference, tmp_path, capsys):
    src = _write_parquet(tmp_path / "c.parquet", "path", [str(f) for f in files])
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), "--model", clip, "--image-column", "path", "--dtype", "float32",
                 "--shard-size", "3", "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert f"embedded {len(files)} rows" in line and "complete" in line
    np.testing.assert_allclose(embedding_matrix(read_corpus_embeddings(out)), reference, atol=ATOL)
    with pytest.raises(SystemExit, match="give one of them"):
        main([str(src), "--out", str(tmp_path / "x"), "--model", clip, "--image-column", "path", "--text-column",
              "path"])
    with pytest.raises(SystemExit, match="takes text only"):
        main([str(src), "--out", str(tmp_path / "y"), "--image-column", "path"])  # the bundled text model
    assert not (tmp_path / "y").exists()


class TextOnlyExecutor(CorpusExecutor):
    """An executor that does not declare images (the default)."""

    name = "text-only"

    def run(self, job, pending, recorder):  # pragma: no cover - refused before it runs
        raise AssertionError("an image job reached an executor that does not embed images")


@pytest.mark.unit
def test_image_jobs_are_refused_before_any_work(tiny, clip, files, tmp_path):
    src = _write_parquet(tmp_path / "c.parquet", "path", [str(f) for f in files])
    text_model = str(tiny("encoder"))
    cases = [
        ({"model": text_model}, "takes text only"),
        ({"model": clip, "engine": TextOnlyExecutor()}, "does not embed images"),
        ({"model": clip, "prompt_name": "query"}, "prompt_name apply to texts"),
        ({"model": clip, "chunked": True}, "chunked apply to texts"),
        ({"model": clip, "text_column": "body"}, "not both"),
    ]
    for i, (kwargs, fragment) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(ValueError, match=fragment):
            embed_corpus(src, out, image_column="path", progress=False, **kwargs)
        assert not out.exists(), kwargs  # nothing written, not even the output directory
    with pytest.raises(ValueError, match="no 'picture' column"):
        embed_corpus(src, tmp_path / "o", model=clip, image_column="picture", progress=False)


@pytest.mark.unit
def test_bad_image_rows_name_the_row(clip, files, tmp_path):
    urls = _write_jsonl(tmp_path / "urls.jsonl", "path", [str(files[0]), "https://example.com/a.png"], [0, 1])
    source = CorpusSource.open(urls, image_column="path")
    with pytest.raises(ValueError, match=r"row 1: column 'path' holds a URL"):
        source.read(source.shards[0])
    nulls = _write_jsonl(tmp_path / "nulls.jsonl", "path", [str(files[0]), None], [0, 1])
    source = CorpusSource.open(nulls, image_column="path")
    with pytest.raises(ValueError, match=r"row 1: column 'path' is NoneType"):
        source.read(source.shards[0])
    missing = _write_jsonl(tmp_path / "missing.jsonl", "path", [str(files[0]), "img/nope.png"], [0, 1])
    with pytest.raises(ValueError, match=r"shard 0, rows 0-1: .*not found.*nope\.png"):
        embed_corpus(missing, tmp_path / "out", model=clip, image_column="path", progress=False,
                     engine_kwargs=ENGINE)


@pytest.mark.unit
def test_text_jobs_keep_their_identity(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n')
    job = CorpusJob(CorpusSource.open(src), "/unused", "m", EmbedOptions())
    assert "image_column" not in job.identity() and job.identity()["text_column"] == "text"
    with pytest.raises(ValueError, match="one column"):
        CorpusSource(str(src), "jsonl", None, None, 2, 10, 10)


def test_lightning_executor_embeds_images(clip, folder, files, reference, tmp_path):
    """The ``lightning`` executor reads shards with ``CorpusSource.read`` and prepares them with the job's
    tokenizer: image rows take the same path as texts."""
    lightning = pytest.importorskip("poolkit_lightning.corpus")
    src = _write_parquet(tmp_path / "c.parquet", "path", [str(f) for f in files])
    summary = embed_corpus(src, tmp_path / "out", model=clip, image_column="path", shard_size=2, progress=False,
                           engine=lightning.LightningExecutor(workers=1, device="cpu"), engine_kwargs=ENGINE)
    assert summary.complete
    np.testing.assert_allclose(embedding_matrix(read_corpus_embeddings(tmp_path / "out")), reference, atol=ATOL)

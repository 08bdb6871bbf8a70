"""``embed_images`` and the ``VectorIndex`` image methods on a tiny random CLIP: the engine's image vectors,
indexed and found by text (the expected order comes from the engine's own vectors, not from meaning)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poolkit.testing import draw_shape as drawing
from poolkit.testing import png_bytes as png
from poolkit_faiss import VectorIndex, embed_images, plan_for

pytestmark = pytest.mark.unit

ATOL = 1e-5
DRAWINGS = [(shape, color) for shape in ("circle", "square", "lines", "dot") for color in ("red", "blue")]
QUERIES = ["a red circle", "two blue lines"]


IMAGES = [drawing(*d) for d in DRAWINGS]


@pytest.fixture(scope="module")
def clip_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from poolkit import LLM
    from poolkit.testing import build_tiny_checkpoint

    return LLM(str(build_tiny_checkpoint(tmp_path_factory.mktemp("faiss-clip") / "model", "clip")), dtype="float32")


@pytest.fixture(scope="module")
def engine_vectors(clip_llm: Any) -> np.ndarray:
    outputs = clip_llm.embed([{"multi_modal_data": {"image": image}} for image in IMAGES], use_tqdm=False)
    return np.stack([o.outputs.numpy() for o in outputs])


def engine_scores(llm: Any, vectors: np.ndarray, query: str) -> np.ndarray:
    """Cosine of each image to ``query``, from the engine's own vectors (the reference ranking)."""
    (out,) = llm.embed(query, use_tqdm=False)
    return vectors @ out.outputs.numpy()


def check_ranking(row: list[tuple[str, float]], ids: list[str], scores: np.ndarray) -> None:
    """``row`` ranks every image as the reference does: each score is the engine's cosine for that id and the
    order is best first (images whose reference scores nearly tie may come in either order)."""
    assert sorted(key for key, _ in row) == sorted(ids)
    got = np.array([score for _, score in row])
    np.testing.assert_allclose(got, [scores[ids.index(key)] for key, _ in row], atol=ATOL)
    assert np.all(np.diff(got) <= ATOL)
    best = np.argsort(-scores)
    if scores[best[0]] - scores[best[1]] > 1e-3:
        assert row[0][0] == ids[best[0]]


def test_embed_images_takes_every_form(clip_llm: Any, engine_vectors: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "circle.png"
    path.write_bytes(png(IMAGES[0]))
    forms = [IMAGES[0], np.asarray(IMAGES[0]), png(IMAGES[0]), path, str(path),
             "data:image/png;base64," + base64.b64encode(png(IMAGES[0])).decode()]
    vectors = embed_images(clip_llm, forms)
    assert vectors.dtype == np.float32 and vectors.shape == (len(forms), clip_llm.model_config.embedding_dim)
    np.testing.assert_allclose(vectors, np.repeat(engine_vectors[:1], len(forms), axis=0), atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embed_images(clip_llm, IMAGES), engine_vectors, atol=ATOL)
    assert embed_images(clip_llm, []).shape == (0, clip_llm.model_config.embedding_dim)
    with pytest.raises(ValueError, match=r"Image 1: .*base64"):
        embed_images(clip_llm, [IMAGES[0], "data:image/png;base64,@@@"])
    with pytest.raises(ValueError, match="not found"):
        embed_images(clip_llm, [tmp_path / "missing.png"])


def test_text_only_models_are_refused(prompted_llm: Any) -> None:
    name = prompted_llm.model_config.served_model_name
    with pytest.raises(ValueError, match=rf"Model '{name}' takes text only \(modalities: \['text'\]\)"):
        embed_images(prompted_llm, IMAGES[:1])
    with pytest.raises(ValueError, match="takes text only"):
        VectorIndex.from_images(IMAGES[:1], prompted_llm, memory_budget_bytes=1 << 20)
    index = VectorIndex(plan_for("flat/fp32", 4, prompted_llm.model_config.embedding_dim), llm=prompted_llm)
    with pytest.raises(ValueError, match="takes text only"):
        index.add_images(IMAGES[:1])
    assert len(index) == 0


@pytest.mark.parametrize("family", ["flat/fp32", "ivf/fp32"])
def test_index_images_and_search_them_by_text(family: str, clip_llm: Any, engine_vectors: np.ndarray,
                                              tmp_path: Path) -> None:
    """``from_images`` (the IVF plan trains on a sample first, as ``from_texts``), ``add_images``,
    ``upsert_images``, and searches by text and by image."""
    dim = clip_llm.model_config.embedding_dim
    extra = {"nlist": 2, "nprobe": 2, "train_size": 4} if family.startswith("ivf") else {}
    plan = plan_for(family, 16, dim, model_name="tiny-clip", **extra)
    ids = [f"{shape}-{color}" for shape, color in DRAWINGS]
    index = VectorIndex.from_images(IMAGES[:6], clip_llm, ids[:6], plan=plan, batch_size=4)
    assert index.add_images(IMAGES[6:], ids[6:], batch_size=1) == ids[6:]
    assert len(index) == len(IMAGES) and sorted(index.ids()) == sorted(ids)
    for query in QUERIES:
        (row,) = index.search_texts(query, k=len(IMAGES)).rows()
        check_ranking(row, ids, engine_scores(clip_llm, engine_vectors, query))
    # Image to image: each drawing's nearest neighbour is itself.
    nearest = index.search_images(IMAGES, k=1)
    assert [row[0][0] for row in nearest.rows()] == ids
    assert index.search_images(IMAGES[3], k=1).rows()[0][0][0] == ids[3]
    # Upsert: "circle-red" now holds the blue square's vector.
    index.upsert_images([IMAGES[3]], [ids[0]])
    assert len(index) == len(IMAGES)
    assert {key for key, _ in index.search_images(IMAGES[3], k=2).rows()[0]} == {ids[0], ids[3]}
    np.testing.assert_allclose(index.embed_images(IMAGES[:2]), engine_vectors[:2], atol=ATOL)


def test_an_index_without_a_model_says_so() -> None:
    index = VectorIndex(plan_for("flat/fp32", 4, 16))
    with pytest.raises(ValueError, match="has no llm"):
        index.add_images(IMAGES[:1])

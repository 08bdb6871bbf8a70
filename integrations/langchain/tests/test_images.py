"""Images through LangChain: ``PoolkitEmbeddings.embed_image`` (in-process and over the server's chat-style
``messages``) and ``PoolkitFAISS.add_images`` found by text queries, on a tiny random CLIP.

The weights are random, so no test assumes what a picture "means": the expected order of a
text search is computed here from the engine's own image and text vectors.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS, _backends
from poolkit.testing import draw_shape as drawing
from poolkit.testing import loopback_http_server

pytestmark = pytest.mark.unit

ATOL = 1e-5
SHAPES = [("circle", "red"), ("square", "blue"), ("lines", "green"), ("triangle", "orange"), ("dot", "purple")]
QUERIES = ["a red circle", "two green lines", "a small purple dot"]


@pytest.fixture(scope="module")
def clip_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from poolkit import LLM
    from poolkit.testing import build_tiny_checkpoint

    return LLM(str(build_tiny_checkpoint(tmp_path_factory.mktemp("lc-clip") / "model", "clip")), dtype="float32")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lc-images")
    for shape, color in SHAPES:
        drawing(shape, color).save(folder / f"{shape}.png")
    return folder


@pytest.fixture(scope="module")
def image_server(image_dir: Path) -> Iterator[str]:
    """A loopback HTTP server for the images (``/<shape>.png``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = image_dir / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with loopback_http_server(Handler) as url:
        yield url


@pytest.fixture(scope="module")
def uris(image_dir: Path, image_server: str) -> list[str]:
    """One uri per drawing, in every form ``embed_image`` takes: a path, a ``file://`` URL, a data URI,
    an http URL, and a path again."""
    paths = [image_dir / f"{shape}.png" for shape, _ in SHAPES]
    return [
        str(paths[0]),
        paths[1].as_uri(),
        "data:image/png;base64," + base64.b64encode(paths[2].read_bytes()).decode(),
        f"{image_server}/{paths[3].name}",
        str(paths[4]),
    ]


@pytest.fixture(scope="module")
def image_vectors(clip_llm: Any) -> np.ndarray:
    """The engine's own vectors of the drawings, in ``SHAPES`` order."""
    outputs = clip_llm.embed([{"multi_modal_data": {"image": drawing(*s)}} for s in SHAPES], use_tqdm=False)
    return np.stack([o.outputs.numpy() for o in outputs])


def text_vectors(llm: Any, texts: list[str]) -> np.ndarray:
    return np.stack([o.outputs.numpy() for o in llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)])


def expected_order(llm: Any, image_vectors: np.ndarray, query: str) -> list[int]:
    """The drawings best first for ``query``, by the engine's cosine (inner product of normalized vectors)."""
    scores = image_vectors @ text_vectors(llm, [query])[0]
    order = np.argsort(-scores, kind="stable")
    assert np.all(np.diff(scores[order]) < -1e-4), "near-tie in the reference order; change the drawings"
    return order.tolist()


# -- a poolkit server in-process, reached by the remote backend's sync and async clients -----------


class _Bridge(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Sends every request to the in-process app's ASGI client, on the loop the app runs on (its engine is
    bound to that loop); records the JSON bodies it forwards."""

    def __init__(self, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client, self.loop = client, loop
        self.bodies: list[Any] = []

    async def _forward(self, method: str, url: str, headers: Any, content: bytes) -> httpx.Response:
        response = await self.client.request(method, url, headers=headers, content=content)
        return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    def _future(self, request: httpx.Request) -> Any:
        content = request.read()
        if content:
            self.bodies.append(json.loads(content))
        coroutine = self._forward(request.method, request.url.path, request.headers, content)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._future(request).result(timeout=60)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await asyncio.wrap_future(self._future(request))


@pytest.fixture(scope="module")
def served(clip_llm: Any) -> Iterator[_Bridge]:
    """``poolkit serve`` of the tiny CLIP as an in-process app, on an event loop of its own."""
    from poolkit.entrypoints.server_args import ServerArgs
    from poolkit.entrypoints.testing import serving

    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), None
    holder: dict[str, Any] = {}

    async def run() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with serving(clip_llm, ServerArgs()) as (_, client):
            holder["bridge"] = _Bridge(client, loop)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(60), "the in-process server did not start"
    try:
        yield holder["bridge"]
    finally:
        loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
        thread.join(60)
        loop.close()


@pytest.fixture
def remote(served: _Bridge, clip_llm: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[PoolkitEmbeddings]:
    """``PoolkitEmbeddings(base_url=...)`` whose HTTP clients reach the in-process server."""
    real_client, real_async = httpx.Client, httpx.AsyncClient

    class Client(real_client):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("base_url") == "http://clip-server":  # not the image downloads of the local backend
                kwargs["transport"] = served
            super().__init__(*args, **kwargs)

    class AsyncClient(real_async):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("base_url") == "http://clip-server":
                kwargs["transport"] = served
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(httpx, "Client", Client)
    monkeypatch.setattr(httpx, "AsyncClient", AsyncClient)
    served.bodies.clear()
    emb = PoolkitEmbeddings(base_url="http://clip-server", model=clip_llm.model_config.served_model_name, chunk_size=2)
    yield emb
    emb.close()


# -- embed_image ------------------------------------------------------------------------------


def test_embed_image_in_process_equals_llm_embed(clip_llm: Any, uris: list[str], image_vectors: np.ndarray) -> None:
    emb = PoolkitEmbeddings(llm=clip_llm, chunk_size=2)  # three engine calls for five images
    assert emb.modalities == ("text", "image")
    vectors = emb.embed_image(uris)
    assert len(vectors) == len(uris) and all(type(x) is float for x in vectors[0])
    np.testing.assert_allclose(np.asarray(vectors), image_vectors, atol=ATOL)
    np.testing.assert_allclose(np.asarray(asyncio.run(emb.aembed_image(uris))), image_vectors, atol=ATOL)
    np.testing.assert_allclose(np.asarray(emb.embed_image([Path(uris[0])])), image_vectors[:1], atol=ATOL)
    assert emb.embed_image([]) == []
    # Texts and images share the space: a query vector is the engine's text vector.
    np.testing.assert_allclose(emb.embed_query(QUERIES[0]), text_vectors(clip_llm, QUERIES[:1])[0], atol=ATOL)


def test_embed_image_errors(clip_llm: Any, tiny_encoder_llm: Any, image_dir: Path, image_server: str) -> None:
    emb = PoolkitEmbeddings(llm=clip_llm, chunk_size=2)
    with pytest.raises(ValueError, match=r"not found.*nope\.png"):
        emb.embed_image([str(image_dir / "circle.png"), str(image_dir / "nope.png")])
    with pytest.raises(ValueError, match=r"Image 2: .*404"):  # numbered in the whole list, not the chunk
        emb.embed_image([str(image_dir / "circle.png")] * 2 + [f"{image_server}/missing.png"])
    with pytest.raises(ValueError, match=r"Image 0: .*base64"):
        emb.embed_image(["data:image/png;base64,@@@"])
    with pytest.raises(TypeError, match="Image uri 0 must be a str"):
        emb.embed_image([b"bytes"])  # type: ignore[list-item]
    text_only = PoolkitEmbeddings(llm=tiny_encoder_llm)
    name = tiny_encoder_llm.model_config.served_model_name
    with pytest.raises(ValueError, match=rf"Model '{name}' takes text only \(modalities: \['text'\]\)"):
        text_only.embed_image([str(image_dir / "circle.png")])
    with pytest.raises(ValueError, match="takes text only"):
        asyncio.run(text_only.aembed_image([str(image_dir / "circle.png")]))


def test_embed_image_over_the_server(remote: PoolkitEmbeddings, served: _Bridge, uris: list[str],
                                     image_vectors: np.ndarray, image_dir: Path) -> None:
    assert remote.modalities is None  # not known before the model card is read
    vectors = remote.embed_image(uris)
    np.testing.assert_allclose(np.asarray(vectors), image_vectors, atol=ATOL)
    assert remote.modalities == ("text", "image")
    # Local files (paths, file:// URLs) travel as data URIs; data and http(s) URLs as they are; two per request.
    bodies = [b for b in served.bodies if "messages" in b]
    sent = [c[0]["content"][0]["image_url"]["url"] for b in bodies for c in b["messages"]]
    assert [len(b["messages"]) for b in bodies] == [2, 2, 1]
    assert all(b["model"] == remote.model and "input" not in b for b in bodies)
    assert sent[0] == "data:image/png;base64," + base64.b64encode((image_dir / "circle.png").read_bytes()).decode()
    assert sent[1].startswith("data:image/png;base64,") and sent[2:4] == uris[2:4]
    np.testing.assert_allclose(np.asarray(asyncio.run(remote.aembed_image(uris))), image_vectors, atol=ATOL)
    with pytest.raises(ValueError, match=r"image 0 \(.*nope\.png\): file not found"):
        remote.embed_image([str(image_dir / "nope.png")])


def test_remote_refuses_a_text_only_model_and_splits_large_requests(monkeypatch: pytest.MonkeyPatch,
                                                                    image_dir: Path) -> None:
    """The served model's card decides before any image is sent; big data URIs go in several requests."""
    seen: list[dict] = []
    modalities = {"m": ["text"]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "modalities": modalities["m"]}]})
        body = json.loads(request.content)
        seen.append(body)
        data = [{"index": i, "object": "embedding", "embedding": [float(i), 1.0]} for i in range(len(body["messages"]))]
        return httpx.Response(200, json={"object": "list", "data": data, "usage": {}})

    transport = httpx.MockTransport(handler)
    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda *a, **k: real_client(*a, **{**k, "transport": transport}))
    path = str(image_dir / "circle.png")
    emb = PoolkitEmbeddings(base_url="http://mock", model="m")
    with pytest.raises(ValueError, match=r"Model 'm' takes text only \(modalities: \['text'\]\)"):
        emb.embed_image([path])
    assert seen == []
    modalities["m"] = ["text", "image"]
    emb = PoolkitEmbeddings(base_url="http://mock", model="m")
    monkeypatch.setattr(_backends, "IMAGE_REQUEST_CHARS", 2 * len(_backends.image_data_uri(Path(path), 0)))
    assert emb.embed_image([path] * 5) == [[0.0, 1.0], [1.0, 1.0]] * 2 + [[0.0, 1.0]]
    assert [len(b["messages"]) for b in seen] == [2, 2, 1]


# -- PoolkitFAISS.add_images -----------------------------------------------------------------------


def check_search(store: PoolkitFAISS, llm: Any, image_vectors: np.ndarray, uris: list[str]) -> None:
    for query in QUERIES:
        order = expected_order(llm, image_vectors, query)
        hits = store.similarity_search_with_score(query, k=len(uris))
        assert [d.id for d, _ in hits] == [f"img-{i}" for i in order], query
        assert [d.page_content for d, _ in hits] == [uris[i] for i in order]
        assert hits[0][0].metadata == {"shape": SHAPES[order[0]][0]}
        np.testing.assert_allclose([s for _, s in hits], (image_vectors @ text_vectors(llm, [query])[0])[order],
                                   atol=ATOL)


def test_add_images_then_search_by_text(clip_llm: Any, uris: list[str], image_vectors: np.ndarray,
                                        tmp_path: Path) -> None:
    emb = PoolkitEmbeddings(llm=clip_llm)
    store = PoolkitFAISS(emb)
    metas = [{"shape": shape} for shape, _ in SHAPES]
    ids = store.add_images(uris, metadatas=metas, ids=[f"img-{i}" for i in range(len(uris))])
    assert ids == [f"img-{i}" for i in range(len(uris))] and len(store) == len(uris)
    check_search(store, clip_llm, image_vectors, uris)
    # MMR re-embeds image candidates as images: with lambda_mult=1 (relevance only) it keeps the search order.
    order = expected_order(clip_llm, image_vectors, QUERIES[0])
    mmr = store.max_marginal_relevance_search(QUERIES[0], k=3, fetch_k=5, lambda_mult=1.0)
    assert [d.id for d in mmr] == [f"img-{i}" for i in order[:3]]
    # Texts and images in one store; an id re-added as text is a text from then on.
    store.add_texts(["a caption"], ids=["caption"])
    assert {d.id for d in store.similarity_search(QUERIES[1], k=10)} == {*ids, "caption"}
    folder = store.save_local(tmp_path)
    rows = [json.loads(line) for line in (folder / "docstore.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows if r.get("modality") == "image") == ids
    loaded = PoolkitFAISS.load_local(tmp_path, emb)
    assert [d.id for d in loaded.max_marginal_relevance_search(QUERIES[0], k=3, fetch_k=6, lambda_mult=1.0)] == \
        [d.id for d in store.max_marginal_relevance_search(QUERIES[0], k=3, fetch_k=6, lambda_mult=1.0)]
    store.add_texts(["now a text"], ids=["img-0"])
    assert "img-0" not in store._image_ids
    store.delete(["img-1"])
    assert "img-1" not in store._image_ids and len(store) == len(uris)


def test_add_images_async_over_the_server(remote: PoolkitEmbeddings, clip_llm: Any, uris: list[str],
                                          image_vectors: np.ndarray) -> None:
    metas = [{"shape": shape} for shape, _ in SHAPES]
    ids = [f"img-{i}" for i in range(len(uris))]
    store = PoolkitFAISS(remote)
    assert store.add_images(uris, metas, ids) == ids
    check_search(store, clip_llm, image_vectors, uris)

    async def scenario() -> list[str]:
        astore = PoolkitFAISS(remote)
        assert await astore.aadd_images(uris, metadatas=metas, ids=ids) == ids
        hits = await astore.asimilarity_search(QUERIES[2], k=len(uris))
        mmr = await astore.amax_marginal_relevance_search(QUERIES[2], k=2, fetch_k=5, lambda_mult=1.0)
        assert [d.id for d in mmr] == [d.id for d in hits[:2]]
        return [d.id for d in hits]

    assert asyncio.run(scenario()) == [f"img-{i}" for i in expected_order(clip_llm, image_vectors, QUERIES[2])]


def test_add_images_refusals(tiny_encoder_llm: Any, image_dir: Path) -> None:
    path = str(image_dir / "circle.png")
    with pytest.raises(ValueError, match="takes text only"):
        PoolkitFAISS(PoolkitEmbeddings(llm=tiny_encoder_llm)).add_images([path])
    store = PoolkitFAISS(DeterministicFakeEmbedding(size=8))
    with pytest.raises(ValueError, match="DeterministicFakeEmbedding cannot embed images"):
        store.add_images([path])
    with pytest.raises(ValueError, match="cannot embed images"):
        asyncio.run(store.aadd_images([path]))
    assert len(store) == 0

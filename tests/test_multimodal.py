"""Image-text (CLIP, SigLIP) embeddings: against transformers in fp32, offline and served with ``messages``.

References: transformers' ``get_text_features`` / ``get_image_features`` on the
model's own tokenizer and image processor (SigLIP's texts padded to 64 tokens, as
its processor does), normalized as the engine's default pooler does; and
sentence-transformers for a checkpoint it saved with its CLIP module.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from poolkit import LLM
from poolkit.entrypoints.server_args import ServerArgs
from poolkit.entrypoints.testing import serving
from poolkit.testing import build_tiny_checkpoint, loopback_http_server
from poolkit.testing import draw_shape as drawing
from poolkit.testing import png_bytes as png

pytestmark = pytest.mark.unit

TEXTS = ["a red circle", "a blue square on white", "two green lines"]


IMAGES = [drawing("circle", "red"), drawing("square", "blue"), drawing("lines", "green")]


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def image_prompt(image: object) -> dict:
    return {"multi_modal_data": {"image": image}}


@pytest.fixture(scope="module", params=["clip", "siglip", "siglip2"])
def tower(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, LLM]:
    path = build_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, path, LLM(str(path), dtype="float32")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    return LLM(str(build_tiny_checkpoint(tmp_path_factory.mktemp("clip"), "clip")), dtype="float32")


def reference(kind: str, path: Path, texts: list[str], images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    padding = {"padding": "max_length", "max_length": 64} if kind.startswith("siglip") else {"padding": True}
    encoded = tokenizer(texts, return_tensors="pt", **padding)
    text_inputs = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
    pixels = AutoImageProcessor.from_pretrained(str(path))(images=images, return_tensors="pt")
    with torch.inference_mode():
        text = model.get_text_features(**text_inputs).pooler_output
        image = model.get_image_features(**pixels).pooler_output
    return F.normalize(text, dim=-1).numpy(), F.normalize(image, dim=-1).numpy()


def assert_cosine(got: np.ndarray, expected: np.ndarray, at_least: float = 0.9999) -> None:
    cos = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert float(np.min(cos)) >= at_least, cos


def test_text_and_image_features_match_transformers(tower: tuple[str, Path, LLM]) -> None:
    kind, path, llm = tower
    assert llm.model_config.modalities == ("text", "image") and "modalities=['text', 'image']" in repr(llm)
    text_ref, image_ref = reference(kind, path, TEXTS, IMAGES)
    texts = np.stack([o.outputs.numpy() for o in llm.embed(TEXTS)])
    images = np.stack([o.outputs.numpy() for o in llm.embed([image_prompt(i) for i in IMAGES])])
    assert_cosine(texts, text_ref)
    assert_cosine(images, image_ref)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)


def test_mixed_batches_keep_order_and_equal_single_calls(tower: tuple[str, Path, LLM]) -> None:
    _, _, llm = tower
    mixed = [IMAGES[0], TEXTS[0], TEXTS[1], IMAGES[1], IMAGES[2], TEXTS[2]]
    prompts = [image_prompt(p) if isinstance(p, Image.Image) else p for p in mixed]
    batched = llm.embed(prompts)
    for prompt, whole in zip(prompts, batched):
        (single,) = llm.embed(prompt)
        np.testing.assert_allclose(single.outputs.numpy(), whole.outputs.numpy(), atol=1e-5)
    assert batched[1].prompt_token_ids and batched[0].prompt_token_ids == []


def test_every_offline_image_form(clip: LLM, tmp_path: Path) -> None:
    image = IMAGES[0]
    path = tmp_path / "circle.png"
    path.write_bytes(png(image))
    forms = [image, np.asarray(image), png(image), path, str(path), {"prompt": "", "multi_modal_data": {"image": image}}]
    vectors = [o.outputs.numpy() for o in clip.embed([f if isinstance(f, dict) else image_prompt(f) for f in forms])]
    for vector in vectors[1:]:
        np.testing.assert_allclose(vector, vectors[0], atol=1e-5)


def test_image_text_similarity(clip: LLM) -> None:
    (score,) = clip.score(TEXTS[0], image_prompt(IMAGES[0]))
    text, image = (o.outputs.numpy() for o in clip.embed([TEXTS[0], image_prompt(IMAGES[0])]))
    assert score.outputs.score == pytest.approx(float(text @ image), abs=1e-5)


def test_bad_image_prompts(clip: LLM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both text and an image"):
        clip.embed({"prompt": "a cat", "multi_modal_data": {"image": IMAGES[0]}})
    with pytest.raises(ValueError, match="takes one image"):
        clip.embed({"multi_modal_data": {"video": IMAGES[0]}})
    with pytest.raises(ValueError, match="unknown key"):
        clip.embed({"text": "a"})
    with pytest.raises(ValueError, match=r"Prompt 1: .*image"):
        clip.embed(["a", image_prompt(b"not an image")])
    text_only = LLM(str(build_tiny_checkpoint(tmp_path, "encoder")), dtype="float32")
    with pytest.raises(ValueError, match=r"Prompt 0 is an image; model .* takes text only"):
        text_only.embed(image_prompt(IMAGES[0]))


def test_sentence_transformers_clip_checkpoint(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import CLIPModel

    base = build_tiny_checkpoint(tmp_path / "base", "clip")
    SentenceTransformer(modules=[CLIPModel(str(base))], device="cpu").save(str(tmp_path / "st"))
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    llm = LLM(str(tmp_path / "st"), dtype="float32")
    # No Normalize module: sentence-transformers returns the projections as they are, and so do we.
    assert llm.model_config.pooler_config.normalize is False
    text = np.stack([o.outputs.numpy() for o in llm.embed(TEXTS)])
    image = np.stack([o.outputs.numpy() for o in llm.embed([image_prompt(i) for i in IMAGES])])
    np.testing.assert_allclose(text, st.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(image, st.encode(IMAGES), atol=1e-5)


# -- server ---------------------------------------------------------------------------------------------


class ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body, kind, status = {"/circle.png": (png(IMAGES[0]), "image/png", 200),
                              "/page.html": (b"<html>hi</html>", "text/html", 200)}.get(
            self.path, (b"missing", "text/plain", 404))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    with loopback_http_server(ImageHandler) as url:
        yield url


def conversation(url: str | None = None, text: str | None = None) -> list[dict]:
    part = {"type": "image_url", "image_url": {"url": url}} if url is not None else {"type": "text", "text": text}
    return [{"role": "user", "content": [part]}]


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_messages(clip: LLM, image_server: str, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "circle.png").write_bytes(png(IMAGES[0]))
    (tmp_path / "outside.png").write_bytes(png(IMAGES[0]))
    expected = {o: r.outputs.numpy() for o, r in zip(
        ("circle", "square", "text"), clip.embed([image_prompt(IMAGES[0]), image_prompt(IMAGES[1]), TEXTS[0]]))}
    settings = ServerArgs(allowed_local_media_path=str(media), max_image_bytes=200_000, max_image_pixels=250_000)

    async def scenario() -> None:
        async with serving(clip, settings) as (_, client):
            async def embed(body: dict) -> list[np.ndarray]:
                response = await client.post("/v1/embeddings", json=body)
                assert response.status_code == 200, response.text
                return [np.asarray(d["embedding"], dtype=np.float32) for d in response.json()["data"]]

            # one conversation; a batch of them mixing a data URI, an http URL, an allowed file and a text
            (single,) = await embed({"messages": conversation(data_uri(IMAGES[0]))})
            np.testing.assert_allclose(single, expected["circle"], atol=1e-5)
            batch = await embed({"messages": [
                conversation(data_uri(IMAGES[1])), conversation(f"{image_server}/circle.png"),
                conversation(str(media / "circle.png")), conversation((media / "circle.png").as_uri()),
                conversation(text=TEXTS[0]), [{"role": "user", "content": TEXTS[0]}]]})
            for got, name in zip(batch, ("square", "circle", "circle", "circle", "text", "text")):
                np.testing.assert_allclose(got, expected[name], atol=1e-5)

            big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8))
            tall = Image.new("RGB", (10, 30_000), "white")
            errors = [
                (conversation("data:image/png;base64,@@@"), "base64"),
                (conversation("data:image/png;base64," + base64.b64encode(b"plain text").decode()), "image"),
                (conversation(data_uri(big)), "200000"),
                (conversation(data_uri(tall)), "pixels"),
                (conversation(f"{image_server}/page.html"), "image"),
                (conversation(f"{image_server}/missing.png"), "404"),
                (conversation(f"http://127.0.0.1:{closed_port()}/x.png"), "127.0.0.1"),
                (conversation(str(tmp_path / "outside.png")), "allowed-local-media-path"),
                (conversation("ftp://example.com/a.png"), "scheme"),
                ([{"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "image_url", "image_url": {"url": data_uri(IMAGES[0])}}]}],
                 "one text or one image"),
            ]
            for messages, fragment in errors:
                response = await client.post("/v1/embeddings", json={"messages": messages})
                body = response.json()
                assert response.status_code == 400 and body["code"] == 400 and body["object"] == "error", body
                assert fragment in body["message"], (fragment, body["message"])
            both = await client.post("/v1/embeddings", json={"input": "a", "messages": conversation(text="a")})
            assert both.status_code == 400 and "either 'input' or 'messages'" in both.json()["message"]
            (after,) = await embed({"messages": conversation(data_uri(IMAGES[0]))})
            np.testing.assert_allclose(after, expected["circle"], atol=1e-5)

            # 16 concurrent clients, texts and images mixed, each answered with its own vectors
            requests = [{"messages": conversation(data_uri(IMAGES[i % 2]))} if i % 3 else {"input": TEXTS[0]}
                        for i in range(16)]
            answers = await asyncio.gather(*(embed(r) for r in requests))
            for i, (vector,) in enumerate(answers):
                name = ("circle", "square")[i % 2] if i % 3 else "text"
                np.testing.assert_allclose(vector, expected[name], atol=1e-5)

    asyncio.run(scenario())


def test_server_refuses_images_for_a_text_model(tmp_path: Path) -> None:
    llm = LLM(str(build_tiny_checkpoint(tmp_path, "encoder")), dtype="float32")

    async def scenario() -> None:
        async with serving(llm) as (_, client):
            response = await client.post("/v1/embeddings", json={"messages": conversation(data_uri(IMAGES[0]))})
            assert response.status_code == 400 and "takes text only" in response.json()["message"]
            assert (await client.post("/v1/embeddings", json={"input": "still fine"})).status_code == 200

    asyncio.run(scenario())

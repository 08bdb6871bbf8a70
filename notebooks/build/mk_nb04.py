"""Writes notebooks/04_multimodal.ipynb (run from the repository root: python notebooks/build/mk_nb04.py)."""
import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = []
cells.append(md("""# Images and text in one vector space (CLIP / SigLIP)

poolkit embeds images and texts with two-tower models — `CLIPModel`, `SiglipModel`, `Siglip2Model` checkpoints as
transformers saves them, and sentence-transformers CLIP models — into **one** vector space, so a text query finds
images. This notebook walks the whole path on CPU in well under a minute:

1. embed a small image set and a few captions offline (`LLM.embed` with vLLM's `multi_modal_data` prompts),
2. index the images with `PoolkitFAISS.add_images` and search them **by text** and by image,
3. send the same images to the server as chat-style `messages` with `image_url` parts.

**No model hub is reachable where this notebook runs (the test suite executes it), so the model here is a tiny CLIP
with random weights.** It shows the mechanics — shapes, batching, indexing, serving — but its rankings carry no
meaning. With real weights the code is the same: `LLM("openai/clip-vit-base-patch32")` or
`LLM("google/siglip-base-patch16-224")`."""))
cells.append(code("""import asyncio
import base64
import io
import logging
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw

from poolkit import LLM
from poolkit.testing import build_tiny_checkpoint

logging.basicConfig(level=logging.WARNING)
workdir = Path(tempfile.mkdtemp(prefix="poolkit-multimodal-"))
model_path = build_tiny_checkpoint(workdir / "clip", "clip")   # random weights; a real model: LLM("openai/clip-vit-base-patch32")
llm = LLM(str(model_path))
llm"""))
cells.append(md("""## 1. A small image set, drawn locally

Twelve images: three shapes in four colours, saved as PNG files (the form a corpus usually has)."""))
cells.append(code("""COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "stripes")


def draw(shape: str, color: tuple[int, int, int], size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((16, 16, size - 16, size - 16), fill=color)
    elif shape == "square":
        pen.rectangle((20, 20, size - 20, size - 20), fill=color)
    else:
        for y in range(8, size, 20):
            pen.rectangle((0, y, size, y + 8), fill=color)
    return image


image_dir = workdir / "images"
image_dir.mkdir()
catalog = []
for shape in SHAPES:
    for name, rgb in COLORS.items():
        path = image_dir / f"{name}_{shape}.png"
        draw(shape, rgb).save(path)
        catalog.append({"path": str(path), "caption": f"a {name} {shape}"})

fig, axes = plt.subplots(len(SHAPES), len(COLORS), figsize=(8, 6))
for ax, item in zip(axes.flat, catalog):
    ax.imshow(Image.open(item["path"]))
    ax.set_title(item["caption"], fontsize=9)
    ax.axis("off")
plt.tight_layout()"""))
cells.append(md("""## 2. Embed images and captions in one call

An image prompt is vLLM's `{"multi_modal_data": {"image": ...}}`; the image may be a `PIL.Image`, a NumPy array,
encoded bytes or a file path. Texts and images can share one call: poolkit runs each through its tower (images
through the model's own image processor, prepared off the model thread) and returns the vectors **in input
order**. A prompt carrying both a text and an image is an error: a two-tower model embeds one or the other."""))
cells.append(code("""captions = [item["caption"] for item in catalog]
prompts = [{"multi_modal_data": {"image": Path(item["path"])}} for item in catalog] + captions
outputs = llm.embed(prompts)
vectors = np.stack([o.outputs.numpy() for o in outputs])
image_vectors, text_vectors = vectors[: len(catalog)], vectors[len(catalog):]
print(vectors.shape, "— norms:", np.round(np.linalg.norm(vectors, axis=1)[:3], 4))

try:
    llm.embed({"prompt": "a red circle", "multi_modal_data": {"image": Image.open(catalog[0]["path"])}})
except ValueError as exc:
    print("refused:", exc)"""))
cells.append(md("""Every caption against every image (cosine: the vectors are normalized). With trained weights the diagonal
would stand out; with random weights it does not — the picture is here to show what to look at."""))
cells.append(code("""similarity = text_vectors @ image_vectors.T
fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(similarity, cmap="viridis")
ax.set_xticks(range(len(captions)), [c.removeprefix("a ") for c in captions], rotation=90, fontsize=8)
ax.set_yticks(range(len(captions)), captions, fontsize=8)
ax.set_xlabel("image")
ax.set_ylabel("caption")
fig.colorbar(im, ax=ax, label="cosine")
plt.tight_layout()"""))
cells.append(md("""## 3. A FAISS index of images, searched by text

`PoolkitEmbeddings.embed_image(uris)` is the method LangChain's image-capable embeddings use;
`PoolkitFAISS.add_images(uris)` stores each image as a document whose `page_content` is its uri, and
`similarity_search(text)` then returns images."""))
cells.append(code("""from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS

embeddings = PoolkitEmbeddings(llm=llm)
store = PoolkitFAISS(embeddings)   # an exact inner-product index, built on the first add
ids = store.add_images([item["path"] for item in catalog], metadatas=[{"caption": c} for c in captions])
print(len(ids), "images indexed")

query = "a red circle"
hits = store.similarity_search_with_score(query, k=4)
fig, axes = plt.subplots(1, len(hits), figsize=(9, 2.6))
for ax, (doc, score) in zip(axes, hits):
    ax.imshow(Image.open(doc.page_content))
    ax.set_title(f"{doc.metadata['caption']}\\nscore {score:.3f}", fontsize=8)
    ax.axis("off")
fig.suptitle(f"text query: {query!r} (random weights: the order is arbitrary)", fontsize=10)
plt.tight_layout()"""))
cells.append(md("""What random weights *can* check: an image's nearest neighbour is itself, and the vector the index holds for
an image equals the offline `LLM.embed` vector of the same file."""))
cells.append(code("""self_hits = 0
for item, vector in zip(catalog, image_vectors):
    (doc, _), = store.similarity_search_with_score_by_vector(vector.tolist(), k=1)
    self_hits += doc.page_content == item["path"]
print(f"image → itself first: {self_hits}/{len(catalog)}")
np.testing.assert_allclose(embeddings.embed_image([catalog[0]["path"]])[0], image_vectors[0], atol=1e-5)
assert self_hits == len(catalog)"""))
cells.append(md("""## 4. The same images through the server

`/v1/embeddings` takes vLLM's chat-style `messages`: one conversation per embedding, each with one `text` or one
`image_url` part; a list of conversations is a batch. `image_url` accepts `data:` URIs always, `http(s)` URLs
(with a timeout, a byte limit and a pixel limit), and local files only under `--allowed-local-media-path`.
Here the app runs in-process (the same app `poolkit serve` runs); errors come back in the OpenAI shape with HTTP 400."""))
cells.append(code("""from poolkit.entrypoints.testing import serving


def data_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def conversation(part: dict) -> list[dict]:
    return [{"role": "user", "content": [part]}]


async def ask_server() -> None:
    async with serving(llm) as (_, client):
        body = {"messages": [conversation({"type": "image_url", "image_url": {"url": data_uri(item["path"])}})
                             for item in catalog[:3]]
                + [conversation({"type": "text", "text": "a red circle"})]}
        response = await client.post("/v1/embeddings", json=body)
        served = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        print("served == offline:", np.allclose(served[:3], image_vectors[:3], atol=1e-5),
              np.allclose(served[3], text_vectors[0], atol=1e-5))
        bad = await client.post("/v1/embeddings", json={"messages": conversation(
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,not-base64!"}})})
        print(bad.status_code, bad.json()["message"])


await ask_server()"""))
cells.append(md("""## Where to go next

* `poolkit serve openai/clip-vit-base-patch32 --allowed-local-media-path /data/images` on a machine with the weights.
* `poolkit embed catalog.parquet --image-column path --out vectors/` embeds an image column into Parquet shards.
* `benchmarks/bench_images.py`: images/s of a ViT-B/32-shaped CLIP against a plain transformers loop."""))
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                  "language_info": {"name": "python"}}
nbf.write(nb, "notebooks/04_multimodal.ipynb")

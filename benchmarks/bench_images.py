"""Image embedding throughput: poolkit vs a plain transformers loop, same random CLIP, same images, one run.

    python benchmarks/bench_images.py                 # 256 images, ViT-B/32-shaped CLIP, poolkit defaults
    python benchmarks/bench_images.py --images 512 --dtype float32

The model is a randomly initialised CLIP of ViT-B/32's shape (vision: 12 layers,
hidden 768, 32-pixel patches on 224x224 images; text: 12 layers, hidden 512;
projection 512) with a ``CLIPImageProcessor`` saved beside it; no weights are
needed. The images are drawn locally (mixed sizes, 160-640 pixels a side).

The peer is what a user writes with transformers alone: batches of 32 through
the same image processor, then ``get_image_features``, fp32, normalized.
poolkit is ``LLM.embed`` on ``{"multi_modal_data": {"image": img}}`` prompts
(preprocessing prepared slice by slice on a helper thread while the model runs,
bf16 where the CPU has native bf16). Images/s is the best of ``--repeat`` runs
after a warm-up; the per-image cosine against the peer is printed beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_clip() -> str:
    import transformers as tf

    from poolkit.testing import build_wordpiece_tokenizer

    path = Path(tempfile.mkdtemp(prefix="poolkit-clip-b32-"))
    tokenizer = build_wordpiece_tokenizer(path, vocab_size=2000)
    torch.manual_seed(0)
    config = tf.CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 512, "intermediate_size": 2048,
                     "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
        projection_dim=512)
    tf.CLIPModel(config).save_pretrained(path)
    tf.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    return str(path)


def draw_images(n: int) -> list:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(160, 640, 2))
        image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            draw.ellipse((x0, y0, x0 + int(rng.integers(10, 80)), y0 + int(rng.integers(10, 80))),
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        images.append(image)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--dtype", default="auto", help="poolkit's dtype (auto: bf16 where the CPU has it)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from transformers import CLIPImageProcessor, CLIPModel

    from poolkit import LLM

    path = build_clip()
    images = draw_images(args.images)
    print(f"{len(images)} images; torch {torch.__version__}, {torch.get_num_threads()} threads")

    llm = LLM(path, dtype=args.dtype)
    print(repr(llm))
    prompts = [{"multi_modal_data": {"image": image}} for image in images]
    llm.embed(prompts[:16], use_tqdm=False)
    best, ours = float("inf"), None
    for _ in range(args.repeat):
        start = time.perf_counter()
        ours = llm.embed(prompts, use_tqdm=False)
        best = min(best, time.perf_counter() - start)
    vectors = np.stack([o.outputs.numpy() for o in ours])

    model = CLIPModel.from_pretrained(path, dtype=torch.float32).eval()
    processor = CLIPImageProcessor.from_pretrained(path)

    def peer() -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), 32):
                pixels = processor(images=images[start:start + 32], return_tensors="pt")
                out.append(torch.nn.functional.normalize(model.get_image_features(**pixels).pooler_output, dim=-1))
        return torch.cat(out).numpy()

    peer()
    best_peer, reference = float("inf"), None
    for _ in range(args.repeat):
        start = time.perf_counter()
        reference = peer()
        best_peer = min(best_peer, time.perf_counter() - start)
    cos = (vectors * reference).sum(1)
    print(f"poolkit      {len(images) / best:7.1f} images/s  ({llm.dtype})")
    print(f"transformers {len(images) / best_peer:7.1f} images/s  (fp32, batches of 32, same processor)")
    print(f"ratio        {best_peer / best:.2f}x; cosine vs transformers min {cos.min():.5f} mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()

"""Sparse, multi-vector and image-text heads on a device (bf16) against the CPU in fp32, tiny checkpoints.

    python benchmarks/device_parity.py --device cuda      (step 6 of benchmarks/gpu_check.sh)

Builds tiny random SPLADE, ColBERT-style (with query expansion), BGE-M3-shaped and
CLIP checkpoints, embeds the same inputs on ``--device`` in ``--dtype`` and on the
CPU in fp32, and prints the minimum cosine per output kind (dense vocabulary
vectors for sparse outputs, per-token vectors for multi-vector ones). bf16 is
expected at >= 0.99; a wrong mask, position or head is far below.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from poolkit import LLM, PoolingParams
from poolkit.testing import (
    SAMPLE_TEXTS,
    build_bge_m3_like,
    build_multi_vector_encoder,
    build_sparse_encoder,
    build_tiny_checkpoint,
)


def vectors(llm: LLM, prompts: list, **kwargs: object) -> list[np.ndarray]:
    outputs = llm.embed(prompts, use_tqdm=False, **kwargs)  # type: ignore[arg-type]
    return [o.outputs.to_dense() if hasattr(o.outputs, "to_dense") else o.outputs.numpy() for o in outputs]


def min_cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    worst = 1.0
    for x, y in zip(a, b):
        x2, y2 = np.atleast_2d(x), np.atleast_2d(y)
        if x2.shape != y2.shape:
            return float("nan")
        cos = (x2 * y2).sum(-1) / (np.linalg.norm(x2, axis=-1) * np.linalg.norm(y2, axis=-1) + 1e-12)
        worst = min(worst, float(cos.min()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="poolkit-device-parity-"))
    images = [{"multi_modal_data": {"image": Image.new("RGB", (40, 30), color)}} for color in ("red", "blue")]
    cases = [
        ("sparse (SPLADE)", build_sparse_encoder(root / "splade"), SAMPLE_TEXTS, {}),
        ("multi-vector, query expansion", build_multi_vector_encoder(
            root / "colbert", query_expansion={"strategy": "fixed", "attend": False, "length": 16}),
         SAMPLE_TEXTS[:6], {"prompt_name": "query", "truncate_prompt_tokens": -1}),
        ("BGE-M3 sparse", build_bge_m3_like(root / "m3"), SAMPLE_TEXTS, {"pooling_params": PoolingParams(output="sparse")}),
        ("BGE-M3 multi-vector", root / "m3", SAMPLE_TEXTS, {"pooling_params": PoolingParams(output="multi_vector")}),
        ("CLIP texts and images", build_tiny_checkpoint(root / "clip", "clip"), [*SAMPLE_TEXTS[:3], *images], {}),
    ]
    for name, path, prompts, kwargs in cases:
        device = LLM(str(path), device=args.device, dtype=args.dtype)
        cpu = LLM(str(path), device="cpu", dtype="float32")
        cos = min_cosine(vectors(device, prompts, **kwargs), vectors(cpu, prompts, **kwargs))
        verdict = "ok" if cos >= 0.99 else "CHECK"
        print(f"{name:<32} {args.device} {args.dtype} vs cpu fp32: min cosine {cos:.5f}  {verdict}")


if __name__ == "__main__":
    main()

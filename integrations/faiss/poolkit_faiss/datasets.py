"""Synthetic clustered embeddings for tests and size/recall checks.

Random isotropic vectors make every approximate index look broken (all
points are about equally far apart); real embeddings have topics and a low
intrinsic dimension. ``clustered_vectors`` draws a Gaussian mixture in a
low-dimensional latent space, maps it linearly into ``d`` dimensions, adds a
little isotropic noise and L2-normalizes.
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(
    n: int,
    d: int,
    *,
    n_clusters: int = 256,
    latent_dim: int = 32,
    spread: float = 0.7,
    noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """``(n, d)`` float32 unit vectors drawn from a Gaussian mixture.

    ``spread`` is the within-cluster standard deviation relative to the
    (unit-variance) cluster centres in the latent space.
    """
    rng = np.random.default_rng(seed)
    latent_dim = min(latent_dim, d)
    centres = rng.standard_normal((n_clusters, latent_dim)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    z = centres[labels] + spread * rng.standard_normal((n, latent_dim)).astype(np.float32)
    basis = rng.standard_normal((latent_dim, d)).astype(np.float32) / np.sqrt(latent_dim)
    x = z @ basis + noise * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)

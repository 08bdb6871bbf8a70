"""poolkit on Ray Data: embed a ``ray.data.Dataset`` on an actor pool, one model per worker.

>>> import ray, poolkit_ray
>>> ds = ray.data.read_parquet("s3://bucket/corpus/")
>>> out = poolkit_ray.embed_dataset(ds, model="BAAI/bge-small-en-v1.5", workers=(1, 8))
>>> poolkit_ray.write_embeddings_parquet(out, "s3://bucket/embeddings/", columns=["id", "embedding"])
"""

from .dataset import (
    PoolkitEmbedder,
    embed_dataset,
    feed_index,
    iter_embedding_batches,
    plan_workers,
    write_embeddings_parquet,
)

__version__ = "0.1.0"

__all__ = [
    "PoolkitEmbedder",
    "embed_dataset",
    "feed_index",
    "iter_embedding_batches",
    "plan_workers",
    "write_embeddings_parquet",
]

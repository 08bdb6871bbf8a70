"""poolkit on Lightning: ``Trainer.predict`` embeds a dataset across processes, GPUs and nodes.

>>> import lightning.pytorch as pl
>>> from poolkit_lightning import PoolkitEmbeddingModule, ParquetPredictionWriter, TextDataset, reassemble
>>> module = PoolkitEmbeddingModule("BAAI/bge-small-en-v1.5")
>>> loader = module.dataloader(TextDataset(texts, ids), batch_size=256)
>>> trainer = pl.Trainer(accelerator="gpu", devices=8, strategy="ddp",
...                      callbacks=[ParquetPredictionWriter("emb/")])
>>> trainer.predict(module, loader, return_predictions=False)
>>> table = reassemble("emb/")          # index, id, embedding, num_tokens, truncated; in input order
"""

from .predict import (
    ParquetPredictionWriter,
    PoolkitEmbeddingModule,
    TextDataset,
    TokenizingCollate,
    embed_texts,
    reassemble,
)

__version__ = "0.1.0"

__all__ = [
    "ParquetPredictionWriter",
    "PoolkitEmbeddingModule",
    "TextDataset",
    "TokenizingCollate",
    "embed_texts",
    "reassemble",
]

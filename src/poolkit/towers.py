"""Two-tower image-text models (CLIP, SigLIP): texts and images into one vector space.

Each tower pools and projects inside the model (``get_text_features`` /
``get_image_features``), so the runner returns one row per input (``(B, 1, D)``
with lengths 1) and the ordinary pooler (CLS of that row, then normalization
and Matryoshka truncation) finishes it. A batch may mix texts and images: each
kind runs through its tower and the rows go back in batch order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .inputs import TokenizedPrompt
from .runner import prepack_cpu_linears


def features(output: Any) -> torch.Tensor:
    """The projected features (transformers 5 returns a model output whose ``pooler_output`` holds them)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TowerRunner:
    """Runs texts through the text tower and images through the vision tower, as the model's processor feeds them.

    Text padding follows the family: SigLIP was trained on texts padded to the full text length (its
    processor's ``padding="max_length"``, pooling the last position), CLIP on padded texts whose EOS token
    it pools. Texts are padded on the tokenizer's ``padding_side`` (SigLIP2's is left), and only the inputs
    the tokenizer itself returns (``model_input_names``) are passed.
    """

    packing = False
    compiled = False
    position_offset = 0
    padded_reason = "two-tower models run each tower on padded batches"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, tokenizer: Any,
                 model_config: ModelConfig, cpu_prepack: bool = True) -> None:
        self.model = model.to(device=device, dtype=dtype)
        self.device = device
        self.dtype = dtype
        self.max_model_len = model_config.max_model_len
        self.pad_to_max = model_config.tower == "siglip"
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_left = tokenizer.padding_side == "left"  # SigLIP2's tokenizer: its towers pool the last position
        self.use_attention_mask = "attention_mask" in tokenizer.model_input_names
        self.prepacked_linears = prepack_cpu_linears(self.model) if device.type == "cpu" and cpu_prepack else 0

    def __repr__(self) -> str:
        return (f"TowerRunner(model={type(self.model).__name__}, device={self.device}, dtype={self.dtype}, "
                f"text_padding={'max_length' if self.pad_to_max else 'longest'}, "
                f"prepacked_linears={self.prepacked_linears})")

    def padded_length(self, length: int) -> int:
        return self.max_model_len if self.pad_to_max else length

    @torch.inference_mode()
    def execute(self, batch: Sequence[TokenizedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [i for i, p in enumerate(batch) if p.image is None]
        images = [i for i, p in enumerate(batch) if p.image is not None]
        rows: list[torch.Tensor | None] = [None] * len(batch)
        if texts:
            for i, row in zip(texts, self._texts([batch[i] for i in texts])):
                rows[i] = row
        if images:
            for i, row in zip(images, self._images([batch[i] for i in images])):
                rows[i] = row
        states = torch.stack(rows)[:, None, :]
        return states, torch.ones(len(batch), dtype=torch.long, device=self.device)

    def _texts(self, prompts: Sequence[TokenizedPrompt]) -> torch.Tensor:
        width = self.max_model_len if self.pad_to_max else max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            span = slice(width - len(prompt), width) if self.pad_left else slice(0, len(prompt))
            input_ids[row, span] = torch.as_tensor(prompt.input_ids)
            mask[row, span] = 1
        kwargs = {"input_ids": input_ids.to(self.device)}
        if self.use_attention_mask:
            kwargs["attention_mask"] = mask.to(self.device)
        return features(self.model.get_text_features(**kwargs))

    def _images(self, prompts: Sequence[TokenizedPrompt]) -> torch.Tensor:
        kwargs = {}
        for key in prompts[0].image:  # type: ignore[union-attr]
            array = np.concatenate([p.image[key] for p in prompts])  # type: ignore[index]
            tensor = torch.from_numpy(array).to(self.device)
            kwargs[key] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
        return features(self.model.get_image_features(**kwargs))

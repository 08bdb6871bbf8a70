"""Model execution: device and dtype choice, padding a batch, one forward pass."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch
from torch import nn

from .inputs import TokenizedPrompt

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def select_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def select_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bf16 (fp16 without bf16 support) on GPUs, float32 on CPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; expected auto, {', '.join(sorted(_DTYPES))}") from None


class ModelRunner:
    """Pads a batch on the right, runs the transformers module, returns states and lengths.

    ``states`` is ``(B, L, D)`` hidden states or per-token logits, or
    ``(B, C)`` logits for models whose own head already pooled.
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, pad_token_id: int = 0) -> None:
        self.model = model.to(device=device, dtype=dtype)
        self.device = device
        self.dtype = dtype
        self.pad_token_id = pad_token_id
        self.accepts_token_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def __repr__(self) -> str:
        return f"ModelRunner(model={type(self.model).__name__}, device={self.device}, dtype={self.dtype})"

    def padded_length(self, length: int) -> int:
        return length

    @torch.inference_mode()
    def execute(self, batch: Sequence[TokenizedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(p) for p in batch], dtype=torch.long)
        width = self.padded_length(int(lengths.max()))
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        with_types = self.accepts_token_types and any(p.token_type_ids is not None for p in batch)
        token_type_ids = torch.zeros((len(batch), width), dtype=torch.long) if with_types else None
        for row, prompt in enumerate(batch):
            n = len(prompt)
            input_ids[row, :n] = torch.as_tensor(prompt.input_ids)
            attention_mask[row, :n] = 1
            if token_type_ids is not None and prompt.token_type_ids is not None:
                token_type_ids[row, :n] = torch.as_tensor(prompt.token_type_ids)
        kwargs = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.to(self.device)
        output = self.model(**kwargs)
        states = output.logits if hasattr(output, "logits") else output.last_hidden_state
        return states, lengths.to(self.device)

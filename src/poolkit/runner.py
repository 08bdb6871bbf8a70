"""Model execution: device and dtype choice, padding a batch, one forward pass.

The fast paths are picked from what the machine reports at run time:
bf16 weights where the CPU multiplies bf16 natively (AVX512-BF16 / AMX) or on
GPUs; padding-free ("packed") batches for models that route attention through
transformers' ``AttentionInterface`` (see :mod:`poolkit.attention`); and,
optionally, ``torch.compile`` per length bucket with the batch dimension dynamic
(compiled graphs take padded batches).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import platform
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import TokenizedPrompt

try:
    from . import attention
except ImportError:  # transformers without the attention/mask interfaces packing plugs into
    attention = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
MIN_BUCKET = 16


def select_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags (Linux ``/proc/cpuinfo``); empty where unavailable."""
    if platform.system() != "Linux":
        return frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls run in hardware (AMX or AVX512-BF16), i.e. faster than fp32."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def select_dtype(dtype: str | torch.dtype, device: torch.device, cpu_dtype: str = "auto") -> torch.dtype:
    """``auto``: bf16 on GPUs (fp16 without bf16) and on CPUs with native bf16; else float32.

    ``cpu_dtype`` says what ``auto`` means on a CPU (``auto``, or a dtype name).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if cpu_dtype != "auto":
            return select_dtype(cpu_dtype, device)
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; expected auto, {', '.join(sorted(_DTYPES))}") from None


def length_buckets(max_len: int) -> list[int]:
    """Powers of two from 16 up to ``max_len`` (which is always the last bucket)."""
    buckets = []
    size = MIN_BUCKET
    while size < max_len:
        buckets.append(size)
        size *= 2
    buckets.append(max_len)
    return buckets


def resolve_compile(choice: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether to ``torch.compile``: ``on``/``off``, or ``auto`` = bf16 on CPUs with native bf16."""
    if choice == "auto":
        return device.type == "cpu" and dtype == torch.bfloat16
    return choice == "on"


# transformers activation classes that oneDNN can fuse into the preceding matmul.
_FUSABLE_GELU = {"GELUActivation": "none", "NewGELUActivation": "tanh", "PytorchGELUTanh": "tanh", "GELUTanh": "tanh"}


class PrepackedLinear(nn.Module):
    """``nn.Linear`` with its weight pre-packed for oneDNN, bias (and optionally GELU, or another oneDNN
    post-op named by ``activation``, e.g. ``swish``) fused.

    Eager ``F.linear`` on CPU copies the broadcast bias into the output before
    the matmul and runs GELU as a separate pass; in bf16 those two cost more
    than the matmul they follow. This is the same kernel inductor's freezing
    pass selects, without the compile.
    """

    def __init__(self, linear: nn.Linear, gelu: str | None = None, batch_hint: int = 4096,
                 activation: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.attr = activation or ("none" if gelu is None else "gelu")
        self.algorithm = gelu or ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, self.attr, [], self.algorithm)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self.attr}"


@functools.cache
def _attributes_read(module_type: type[nn.Module]) -> frozenset[str]:
    """Children whose attributes a module's ``forward`` reads (``self.wo.weight.dtype`` in T5): those must stay
    ``nn.Linear``. Where the source cannot be read, every child counts as read."""
    try:
        source = inspect.getsource(module_type.forward)
    except (OSError, TypeError):
        return frozenset({"*"})
    return frozenset(re.findall(r"self\.(\w+)\.\w+", source))


# QuickGELU (CLIP): x * sigmoid(1.702 x) = silu(1.702 x) / 1.702, so fc1's weights times 1.702 with a fused swish,
# and fc2's divided by 1.702, compute the same MLP without the two elementwise passes.
QUICK_GELU_SCALE = 1.702


def _scaled(linear: nn.Linear, factor: float, bias: bool) -> nn.Linear:
    scaled = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        scaled.weight.copy_(linear.weight.float() * factor)
        if linear.bias is not None:
            scaled.bias.copy_(linear.bias.float() * factor if bias else linear.bias)
    return scaled


def fuse_mlp_activation(module: nn.Module) -> bool:
    """CLIP-style MLPs (``fc1`` → ``activation_fn`` → ``fc2``): fold a GELU or QuickGELU into ``fc1``'s kernel."""
    fc1, fc2, act = getattr(module, "fc1", None), getattr(module, "fc2", None), getattr(module, "activation_fn", None)
    if type(fc1) is not nn.Linear or type(fc2) is not nn.Linear or act is None:
        return False
    name = type(act).__name__
    if name == "QuickGELUActivation":
        module.fc1 = PrepackedLinear(_scaled(fc1, QUICK_GELU_SCALE, bias=True), activation="swish")
        module.fc2 = PrepackedLinear(_scaled(fc2, 1 / QUICK_GELU_SCALE, bias=False))
    elif name in _FUSABLE_GELU:
        module.fc1 = PrepackedLinear(fc1, gelu=_FUSABLE_GELU[name])
        module.fc2 = PrepackedLinear(fc2)
    else:
        return False
    module.activation_fn = nn.Identity()
    return True


def prepack_cpu_linears(model: nn.Module) -> int:
    """Swap every ``nn.Linear`` for a :class:`PrepackedLinear`, fusing BERT-style ``dense`` + GELU and CLIP-style
    ``fc1`` + (Quick)GELU.

    A linear whose parent's code reads its attributes (not just calls it) keeps its type, so the
    model's code runs unchanged. Returns the number of layers packed (0 where oneDNN is unavailable).
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for module in list(model.modules()):
        read = _attributes_read(type(module))  # type: ignore[arg-type]
        if "*" in read:
            continue
        act = getattr(module, "intermediate_act_fn", None)
        dense = getattr(module, "dense", None)
        if type(dense) is nn.Linear and "dense" not in read and act is not None and type(act).__name__ in _FUSABLE_GELU:
            module.dense = PrepackedLinear(dense, gelu=_FUSABLE_GELU[type(act).__name__])
            module.intermediate_act_fn = nn.Identity()
            count += 1
        if not {"fc1", "fc2", "activation_fn"} & read and fuse_mlp_activation(module):
            count += 2
        for name, child in list(module.named_children()):
            # Exact type: subclasses (LoRA, quantized) keep their forward.
            if type(child) is nn.Linear and name not in read:
                setattr(module, name, PrepackedLinear(child))
                count += 1
    return count


def position_offset(model: nn.Module) -> int:
    """Where position ids start: RoBERTa-style embeddings count from ``padding_idx + 1``, the rest from 0."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    if embeddings is not None and hasattr(type(embeddings), "create_position_ids_from_input_ids"):
        return int(embeddings.padding_idx) + 1
    # MPNet-style: the same convention through a module-level helper; the position table's padding row shows it.
    positions = getattr(embeddings, "position_embeddings", None)
    if isinstance(positions, nn.Embedding) and positions.padding_idx is not None:
        return int(positions.padding_idx) + 1
    return 0


def sequence_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A ``*ForSequenceClassification`` encoder's head as a function of padded hidden states.

    BERT-style models pool the first token inside the backbone (``pooler``:
    dense + tanh) and classify that; RoBERTa-style heads take the first row of
    the hidden states themselves. Dropout is the identity at inference. The
    packing probe checks the result against the whole model, so a head that
    follows neither pattern stays padded.
    """
    backbone = getattr(model, "base_model", model)
    classifier = getattr(model, "classifier", None)
    if backbone is model or not isinstance(classifier, nn.Module):
        return None
    pooler = getattr(backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        return lambda states: classifier(pooler(states))
    return classifier


class ModelRunner:
    """Runs a batch through the transformers module, packed or padded.

    Packed (padding-free): the batch's tokens are laid end to end in one row and
    attention keeps sequences apart (:mod:`poolkit.attention`), so no FLOP is
    spent on padding. Padded: right-padded to a multiple of 8 (or to a length
    bucket when compiled), with an attention mask.

    Returns ``(states, lengths)``: ``states`` is ``(T, D)`` packed hidden states
    (the sequences' tokens end to end), ``(B, L, D)`` right-padded hidden states or
    per-token logits, or ``(B, C)`` logits for models whose own head pooled.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        max_model_len: int,
        pad_token_id: int = 0,
        compile_model: bool = False,
        packing: str = "auto",
        cpu_prepack: bool = True,
    ) -> None:
        self.model = model.to(device=device, dtype=dtype)
        self.device = device
        self.dtype = dtype
        self.pad_token_id = pad_token_id
        self.buckets = length_buckets(max_model_len)
        self.accepts_token_types = "token_type_ids" in inspect.signature(model.forward).parameters
        self.compiled = compile_model
        self.prepacked_linears = 0
        if device.type == "cpu" and not compile_model and cpu_prepack:
            self.prepacked_linears = prepack_cpu_linears(self.model)
        self.position_offset = position_offset(self.model)
        if self.position_offset:
            # These models number positions by counting non-padding ids: pad with the id they skip, or padded
            # rows would count past the position table (MPNet's is fixed at 1 whatever the tokenizer says).
            self.pad_token_id = self.position_offset - 1
        self._pin = device.type == "cuda"
        self._forward = self.model
        self.packing = False
        self.padded_reason: str | None = "packing is off" if packing == "off" else None
        self._packed_model: nn.Module = self.model
        self._packed_head: Callable[[torch.Tensor], torch.Tensor] | None = None
        if packing != "off" and not compile_model:
            self.packing = self._enable_packing(required=packing == "on")
        if compile_model:
            self.padded_reason = self.padded_reason or "compiled models run padded length buckets"
            # Static sequence length per bucket keeps attention kernels specialised;
            # the batch dimension is marked dynamic so row counts don't recompile.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(self.buckets))
            self._forward = torch.compile(self.model, dynamic=False, options={"freezing": device.type == "cpu"})

    def __repr__(self) -> str:
        return (
            f"ModelRunner(model={type(self.model).__name__}, device={self.device}, dtype={self.dtype}, "
            f"packing={self.packing}{'' if self.packing else f' ({self.padded_reason})'}, compiled={self.compiled}, prepacked_linears={self.prepacked_linears})"
        )

    def _enable_packing(self, required: bool) -> bool:
        """Switch attention to ``poolkit_varlen`` if the model supports it and a probe agrees with padding.

        Packing needs the attention interface, and a bare backbone or a
        sequence-classification head that can run on the unpacked rows
        (:func:`sequence_head`; other heads would pool the whole packed row).
        The probe runs three short random sequences both ways, so a model whose
        position ids, attention or head do not follow the conventions assumed
        here stays on the padded path.
        """
        model = self.model
        reason = None
        if attention is None:
            reason = "this transformers version has no AttentionInterface/mask registry to plug into"
        elif not getattr(model, "_supports_attention_backend", False):
            reason = "its attention does not go through transformers' AttentionInterface"
        elif (has_head := getattr(model, "base_model", model) is not model) and sequence_head(model) is None:
            reason = "its transformers head pools inside the model"
        else:
            if has_head:  # run the backbone packed, the head on the unpacked rows
                self._packed_model, self._packed_head = model.base_model, sequence_head(model)
            previous = model.config._attn_implementation
            try:
                model.set_attn_implementation(attention.register())
                reason = self._probe_packing()
            except Exception as exc:
                reason = f"the packed probe failed: {exc}"
            if reason is not None:
                model.set_attn_implementation(previous)
                self._packed_model, self._packed_head = model, None
        if reason is None:
            return True
        self.padded_reason = reason
        if required:
            raise ValueError(f"packing=on is not possible for {type(model).__name__}: {reason}")
        logger.info("Padded batches for %s: %s", type(model).__name__, reason)
        return False

    @torch.inference_mode()
    def _probe_packing(self) -> str | None:
        vocab = self.model.get_input_embeddings().num_embeddings
        generator = torch.Generator().manual_seed(0)
        # Ordinary tokens only: models like RoBERTa derive padded positions from where the pad id is.
        ids = [i for i in torch.randint(0, vocab, (40,), generator=generator).tolist() if i != self.pad_token_id]
        prompts = [TokenizedPrompt(ids[:11]), TokenizedPrompt(ids[11:16]), TokenizedPrompt(ids[16:24])]
        packed, _ = self._execute_packed(prompts)
        padded, _ = self._execute_padded(prompts)
        if self._packed_head is not None:  # (B, C) logits: bf16 kernels differ by ~1e-2 relative
            diff = float((packed.float() - padded.float()).abs().max())
            if not diff <= 0.02 * (1 + float(padded.abs().max())):
                return f"packed and padded logits differ (by {diff:.4f})"
            return None
        for row, (tokens, prompt) in enumerate(zip(torch.split(packed, [len(p) for p in prompts]), prompts)):
            n = len(prompt)
            cos = F.cosine_similarity(tokens.float(), padded[row, :n].float(), dim=-1).min()
            if not cos >= 0.99:  # bf16 kernels differ by ~1e-3; a wrong position or mask is far off
                return f"packed and padded outputs differ (token cosine {float(cos):.4f})"
        return None

    def padded_length(self, length: int) -> int:
        """Padded batches' width: a multiple of 8 eager (what kernels like), a
        power-of-two bucket compiled (few shapes)."""
        if not self.compiled:
            return min(-(-length // 8) * 8, max(self.buckets[-1], length))
        for bucket in self.buckets:
            if bucket >= length:
                return bucket
        return length

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    @torch.inference_mode()
    def execute(self, batch: Sequence[TokenizedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.packing:
            return self._execute_packed(batch)
        return self._execute_padded(batch)

    def packed_row_length(self, tokens: int) -> int:
        """Length of a packed row of ``tokens`` tokens, rounded up on CPU.

        oneDNN keeps 1-3 MB for every distinct matmul shape it has run, so a
        server seeing arbitrary batch sizes grew by ~1 GB over 400 batches.
        Rounding to 8 sizes per octave up to 1,024 tokens and to multiples of
        128 above (< 1.5% extra work for full 8k batches) bounds the shapes to 120.
        """
        if self.device.type != "cpu" or tokens <= 16:
            return tokens
        step = min(128, 1 << ((tokens - 1).bit_length() - 4))
        return -(-tokens // step) * step

    def _execute_packed(self, batch: Sequence[TokenizedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = [len(p) for p in batch]
        total = sum(sizes)
        filler = self.packed_row_length(total) - total
        # A filler sequence of padding tokens (attending only to itself, output dropped) rounds the row length.
        seq_sizes = sizes + [filler] if filler else sizes
        lengths = torch.tensor(sizes, dtype=torch.long)
        max_len = max(seq_sizes)
        rows = torch.repeat_interleave(torch.arange(len(sizes)), lengths)
        offsets = torch.arange(total) - (lengths.cumsum(0) - lengths)[rows]  # each token's index in its sequence
        positions = torch.cat([offsets, torch.zeros(filler, dtype=torch.long)])
        input_ids = list(itertools.chain.from_iterable(p.input_ids for p in batch)) + [self.pad_token_id] * filler
        cu_seq_lens = self._to_device(torch.tensor([0, *itertools.accumulate(seq_sizes)], dtype=torch.int32))
        kwargs = {
            "input_ids": self._to_device(torch.tensor(input_ids, dtype=torch.long)[None]),
            "position_ids": self._to_device(positions[None] + self.position_offset),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_len,
            "max_length_k": max_len,
            "packed_runs": attention.length_runs(
                seq_sizes, [p.attend_len or len(p) for p in batch] + ([filler] if filler else [])),
        }
        if self.accepts_token_types and any(p.token_type_ids is not None for p in batch):
            token_types = [p.token_type_ids if p.token_type_ids is not None else [0] * len(p) for p in batch]
            kwargs["token_type_ids"] = self._to_device(
                torch.tensor(list(itertools.chain.from_iterable(token_types)) + [0] * filler, dtype=torch.long)[None]
            )
        states = self._packed_model(**kwargs).last_hidden_state[0, :total]
        if self._packed_head is None:
            # The pooler takes packed (T, D) states as they are: no padded grid to build or to reduce.
            return states, lengths.to(self.device)
        # A transformers head runs on right-padded rows, as it was written for.
        width = max(sizes)
        slots = self._to_device(rows * width + offsets)
        grid = states.new_zeros(len(sizes) * width, states.shape[-1]).index_copy_(0, slots, states)
        return self._packed_head(grid.view(len(sizes), width, -1)), lengths.to(self.device)

    def _execute_padded(self, batch: Sequence[TokenizedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = len(batch)
        lengths = torch.tensor([len(p) for p in batch], dtype=torch.long)
        width = self.padded_length(int(lengths.max()))
        # Compiled graphs treat a batch of one as a special shape; padding to two rows avoids a recompile.
        padded_rows = max(rows, 2) if self.compiled else rows
        input_ids = torch.full((padded_rows, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((padded_rows, width), dtype=torch.long)
        with_types = self.accepts_token_types and any(p.token_type_ids is not None for p in batch)
        token_type_ids = torch.zeros((padded_rows, width), dtype=torch.long) if with_types else None
        for row, prompt in enumerate(batch):
            n = len(prompt)
            input_ids[row, :n] = torch.as_tensor(prompt.input_ids)
            attention_mask[row, :prompt.attend_len or n] = 1
            if token_type_ids is not None and prompt.token_type_ids is not None:
                token_type_ids[row, :n] = torch.as_tensor(prompt.token_type_ids)
        attention_mask[rows:, 0] = 1  # padding rows attend to one token so softmax stays finite
        kwargs = {"input_ids": self._to_device(input_ids), "attention_mask": self._to_device(attention_mask)}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = self._to_device(token_type_ids)
        if self.compiled:
            for tensor in kwargs.values():
                torch._dynamo.mark_dynamic(tensor, 0)
        output = self._forward(**kwargs)
        states = output.logits if hasattr(output, "logits") else output.last_hidden_state
        return states[:rows], lengths.to(self.device)

"""Tokenization: prompts (text or token ids, single or pairs) → checked token sequences.

Nothing is cut silently: a prompt longer than the model's limit is an error
unless the caller asked for ``truncate_prompt_tokens``. Truncation keeps the
model's special tokens, for token-id prompts as for text (the tokenizer's own
rule), and every sequence remembers how long it was before it was cut. It cuts
the end of a prompt, or its start where the tokenizer's ``truncation_side`` is
``"left"``; a request may choose the side itself (``truncation_side``), which
never reconfigures the tokenizer (it is shared by concurrent requests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any, Literal, Union

import numpy as np

from .config import ModelConfig
from .params import check_truncate_prompt_tokens


@dataclass(eq=False)
class ImagePrompt:
    """An image to embed (vLLM's ``{"multi_modal_data": {"image": ...}}``): a ``PIL.Image``, a NumPy array,
    encoded bytes, or a file path (``str`` or ``Path``)."""

    image: Any

    def __repr__(self) -> str:
        size = getattr(self.image, "size", None) or getattr(self.image, "shape", None)
        return f"ImagePrompt({type(self.image).__name__}{f' {size}' if size else ''})"


Prompt = Union[str, Sequence[int], ImagePrompt]
TruncationSide = Literal["left", "right"]
TRUNCATION_SIDES = ("left", "right")
# What an image counts for when slicing a large input: preprocessing one (decode, resize, normalize) costs about
# as much as tokenizing this many characters, so large image inputs are prepared in slices of tens of images
# that overlap the model's work on the previous slice.
IMAGE_PROMPT_SIZE = 16_384


@dataclass
class TokenizedPrompt:
    """One sequence ready for the model.

    ``num_input_tokens``: its length before truncation (``-1``: not cut).
    ``pool_start``: pooling ignores the tokens before it (a prompt that the
    model's Sentence-Transformers ``Pooling`` excludes with ``include_prompt=False``).
    """

    input_ids: list[int]
    token_type_ids: list[int] | None = None
    num_input_tokens: int = -1
    pool_start: int = 0
    # An image instead of text: the image processor's arrays (batch dimension 1) and what it costs a batch
    # (the vision tower's tokens: patches + class token).
    image: dict[str, np.ndarray] | None = None
    image_tokens: int = 0
    # Tokens every token may attend to, counted from the start (None: all). ColBERT query expansion appends
    # tokens that attend to the query while no token attends to them (sentence-transformers' attend=False).
    attend_len: int | None = None

    def __post_init__(self) -> None:
        if self.num_input_tokens < 0:
            self.num_input_tokens = len(self.input_ids)

    def __len__(self) -> int:
        return len(self.input_ids) + self.image_tokens


def is_token_ids(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def prompt_from_dict(prompt: Mapping[str, Any], index: int) -> Prompt:
    """vLLM's prompt dicts: ``{"prompt": text}``, ``{"prompt_token_ids": ids}`` or
    ``{"multi_modal_data": {"image": image}}`` (an empty ``"prompt"`` beside it is allowed)."""
    unknown = set(prompt) - {"prompt", "prompt_token_ids", "multi_modal_data"}
    if unknown:
        raise ValueError(f"Prompt {index} has unknown key(s) {', '.join(sorted(unknown))}; a prompt dict takes "
                         "prompt, prompt_token_ids or multi_modal_data")
    media = prompt.get("multi_modal_data")
    if media is not None:
        if not isinstance(media, Mapping) or set(media) != {"image"}:
            kinds = ", ".join(sorted(media)) if isinstance(media, Mapping) else type(media).__name__
            raise ValueError(f"Prompt {index}: multi_modal_data takes one image ({{'image': ...}}), got {kinds}")
        if prompt.get("prompt") or prompt.get("prompt_token_ids"):
            raise ValueError(f"Prompt {index} has both text and an image: two-tower models (CLIP, SigLIP) embed "
                             "one or the other; send them as separate prompts")
        return ImagePrompt(media["image"])
    if "prompt" in prompt and isinstance(prompt["prompt"], str):
        return prompt["prompt"]
    if "prompt_token_ids" in prompt and is_token_ids(prompt["prompt_token_ids"]):
        return list(prompt["prompt_token_ids"])
    raise TypeError(f"Prompt {index}: a prompt dict needs a text 'prompt', 'prompt_token_ids' or 'multi_modal_data'")


def normalize_prompts(prompts: Any) -> list[Prompt]:
    """One prompt or a list of prompts → a list (a flat list of ints is one prompt; dicts as vLLM's)."""
    if isinstance(prompts, (str, Mapping, ImagePrompt)):
        prompts = [prompts]
    if isinstance(prompts, (list, tuple)):
        if prompts and is_token_ids(prompts):
            return [list(prompts)]
        out: list[Prompt] = []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, (str, ImagePrompt)):
                out.append(prompt)
            elif is_token_ids(prompt):
                out.append(list(prompt))
            elif isinstance(prompt, Mapping):
                out.append(prompt_from_dict(prompt, index))
            else:
                raise TypeError(f"Prompt {index} must be a string, a list of token ids or a prompt dict, got "
                                f"{type(prompt).__name__}")
        return out
    raise TypeError(f"Prompts must be a string, a list of token ids, a prompt dict, or a list of those; got "
                    f"{type(prompts).__name__}")


def prompt_size(prompt: Prompt) -> int:
    """A prompt's size before tokenizing: characters of a text, the number of token ids, or an image's share."""
    return IMAGE_PROMPT_SIZE if isinstance(prompt, ImagePrompt) else len(prompt)


def slices(prompts: Sequence[Prompt], max_items: int, max_chars: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges cutting ``prompts`` into slices of at most ``max_items`` prompts and about
    ``max_chars`` characters (at least one prompt each): the units a large input is tokenized in while the
    model runs the previous one."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < len(prompts):
        stop, size = start, 0
        while stop < len(prompts) and stop - start < max_items and (
                stop == start or size + prompt_size(prompts[stop]) <= max_chars):
            size += prompt_size(prompts[stop])
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


@cache
def _plain_fast_tokenizer(cls: Any) -> bool:
    """A transformers fast (Rust-backed) tokenizer class that adds nothing of its own around the backend's encode."""
    try:
        from transformers import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: always go through the tokenizer's own call
        return False
    return (issubclass(cls, TokenizersBackend) and cls.__call__ is PreTrainedTokenizerBase.__call__
            and cls._encode_plus is TokenizersBackend._encode_plus
            and not hasattr(cls, "_switch_to_input_mode"))


class InputProcessor:
    """Wraps the model's (fast) tokenizer with the engine's length rules."""

    def __init__(self, tokenizer: Any, model_config: ModelConfig) -> None:
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.max_model_len = model_config.max_model_len
        self.vocab_size = len(tokenizer)

    @cached_property
    def image_processor(self) -> Any:
        """The model's transformers image processor (loaded on first use; ``None`` for text-only models)."""
        if "image" not in self.model_config.modalities:
            return None
        from .loader import load_image_processor

        return load_image_processor(self.model_config.model_path, self.model_config.trust_remote_code)

    def encode_image(self, prompt: ImagePrompt, index: int) -> TokenizedPrompt:
        """An image, loaded (see :mod:`poolkit.media`) and preprocessed for the vision tower."""
        if self.image_processor is None:
            raise ValueError(f'Prompt {index} is an image; model "{self.model_config.served_model_name}" takes '
                             "text only")
        from .media import MediaError, load_image

        source = prompt.image
        # offline, a string is a file path, unless it is a URL (data:, http(s)://, file://)
        is_url = isinstance(source, str) and source.startswith(("data:", "http://", "https://", "file://"))
        try:
            image = load_image(source, path_is_explicit=not is_url)
        except MediaError as exc:
            raise ValueError(f"Prompt {index}: {exc}") from None
        arrays = self.image_processor(images=image, return_tensors="np")
        return TokenizedPrompt([], image={k: np.asarray(v) for k, v in arrays.items()},
                               image_tokens=self.model_config.image_tokens)

    def resolve_truncation(self, truncate_prompt_tokens: int | None) -> int | None:
        """The token limit a prompt is cut to (``None``: never cut); ``ValueError`` for a bad value."""
        check_truncate_prompt_tokens(truncate_prompt_tokens)
        if truncate_prompt_tokens is None:
            return None
        if truncate_prompt_tokens == -1:
            return self.max_model_len
        if truncate_prompt_tokens > self.max_model_len:
            raise ValueError(
                f"truncate_prompt_tokens={truncate_prompt_tokens} exceeds the model's maximum "
                f"length of {self.max_model_len} tokens"
            )
        return truncate_prompt_tokens

    def prepare_text(self, text: str) -> str:
        """The model's own text normalization (Sentence-Transformers ``do_lower_case``)."""
        return text.lower() if self.model_config.do_lower_case else text

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self.tokenize(text, add_special_tokens))

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text, without the length check (``/tokenize``, prompt lengths)."""
        return self.text_ids([self.prepare_text(text)], add_special_tokens)[0]

    def text_ids(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of texts, uncut: ``tokenizer(texts, truncation=False)["input_ids"]``.

        For a plain transformers fast tokenizer this is its Rust backend's ``encode_batch_fast`` (no character
        offsets), set up as the tokenizer's own call sets it (no truncation, no padding, its
        ``split_special_tokens``): the same ids for about two thirds of the call's CPU time, which in the server
        is time taken from the model on the same cores.
        """
        backend = self._rust_backend
        if backend is None:
            return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=add_special_tokens,
                                                         truncation=False, verbose=False)["input_ids"]]
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        split = bool(getattr(self.tokenizer, "split_special_tokens", False))
        if backend.encode_special_tokens != split:
            backend.encode_special_tokens = split
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    @property
    def _rust_backend(self) -> Any:
        """The ``tokenizers.Tokenizer`` behind a transformers fast tokenizer whose call is the base class's
        (nothing added around the backend's encode); ``None`` otherwise."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if not _plain_fast_tokenizer(self.tokenizer.__class__) or not hasattr(backend, "encode_batch_fast"):
            return None
        return backend

    @cached_property
    def special_template(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a single text (e.g. ``[CLS]`` and ``[SEP]``)."""
        probe = "a"
        with_special = self.tokenize(probe)
        plain = self.tokenize(probe, add_special_tokens=False)
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start:start + len(plain)] == plain:
                return with_special[:start], with_special[start + len(plain):]
        return [], []

    def truncation_side(self, side: TruncationSide | None = None) -> TruncationSide:
        """The side prompts are cut on: ``side`` if given (``ValueError`` if not ``"left"``/``"right"``),
        else the tokenizer's ``truncation_side``."""
        if side is None:
            return "left" if self.tokenizer.truncation_side == "left" else "right"
        if side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be 'left' (keep the end) or 'right' (keep the start), got {side!r}")
        return side

    def framed(self, ids: list[int], limit: int) -> bool:
        """True when ``ids`` are a text between the tokenizer's special tokens (:attr:`special_template`) and a cut
        to ``limit`` leaves room for some of the text: then :meth:`truncate_ids` cuts as the tokenizer does."""
        prefix, suffix = self.special_template
        return (len(prefix) + len(suffix) < limit and ids[:len(prefix)] == prefix
                and (not suffix or ids[len(ids) - len(suffix):] == suffix))

    def truncate_ids(self, ids: list[int], limit: int, side: TruncationSide | None = None,
                     keep_start: int = 0) -> list[int]:
        """Cut token ids to ``limit`` as the tokenizer cuts text: its special tokens stay at both ends.

        ``side``: ``"right"`` drops the end, ``"left"`` the start (default: the tokenizer's ``truncation_side``).
        ``keep_start``: the first tokens (special ones included) that a ``"left"`` cut keeps too, e.g. a
        prompt put before the text; ignored where they leave no room for the rest.
        """
        prefix, suffix = self.special_template
        left = self.truncation_side(side) == "left"
        if not self.framed(ids, limit):
            return ids[-limit:] if left else ids[:limit]
        body = ids[len(prefix):len(ids) - len(suffix)]
        keep = limit - len(prefix) - len(suffix)
        if not left:
            return prefix + body[:keep] + suffix
        protected = max(0, keep_start - len(prefix))
        if protected >= keep:
            protected = 0
        return prefix + body[:protected] + body[len(body) - (keep - protected):] + suffix

    def encode(
        self, prompts: Sequence[Prompt], truncate_prompt_tokens: int | None = None, first_index: int = 0,
        max_len: int | None = None, truncation_side: TruncationSide | None = None, keep_text_start: int = 0,
    ) -> list[TokenizedPrompt]:
        """Tokenize texts in one batched call; token-id prompts pass through checked.

        ``first_index`` is the position of ``prompts[0]`` in the caller's input, for error messages.
        ``max_len``: the longest prompt accepted (default: the model's limit; chunked processing takes
        longer ones and splits them). ``truncation_side``: which end ``truncate_prompt_tokens`` cuts
        (default: the tokenizer's ``truncation_side``); a side other than the tokenizer's cuts the
        tokenized text with :meth:`truncate_ids` (the same tokens the tokenizer would keep), never by
        reconfiguring the tokenizer. ``keep_text_start``: with ``truncation_side="left"``, the first tokens
        of every text that the cut keeps (a prompt put before it; see :meth:`truncate_ids`).
        """
        limit = self.resolve_truncation(truncate_prompt_tokens)
        side = self.truncation_side(truncation_side)
        keep_text_start = keep_text_start if truncation_side == "left" else 0
        by_tokenizer = side == self.truncation_side() and not keep_text_start
        texts = [(i, self.prepare_text(p)) for i, p in enumerate(prompts) if isinstance(p, str)]
        out: list[TokenizedPrompt | None] = [None] * len(prompts)
        if texts:
            for (i, _), ids in zip(texts, self.text_ids([t for _, t in texts])):
                out[i] = TokenizedPrompt(ids)
            too_long = [(i, t) for i, t in texts if limit is not None and len(out[i]) > limit]  # type: ignore[arg-type]
            # Cut the ids already made (the same tokens as the tokenizer's own cut, without tokenizing a long text
            # twice); only ids not framed by the special-token template are tokenized again, truncating.
            again = [(i, t) for i, t in too_long
                     if by_tokenizer and not self.framed(out[i].input_ids, limit)]  # type: ignore[arg-type, union-attr]
            for i, _ in too_long:
                ids = out[i].input_ids  # type: ignore[union-attr]
                out[i] = TokenizedPrompt(self.truncate_ids(ids, limit, side, keep_text_start),  # type: ignore[arg-type]
                                         num_input_tokens=len(ids))
            if again:
                enc = self.tokenizer([t for _, t in again], add_special_tokens=True, truncation=True,
                                     max_length=limit, verbose=False)
                for (i, _), ids in zip(again, enc["input_ids"]):
                    out[i] = TokenizedPrompt(list(ids), num_input_tokens=out[i].num_input_tokens)  # type: ignore[union-attr]
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, ImagePrompt):
                out[i] = self.encode_image(prompt, first_index + i)
            elif not isinstance(prompt, str):
                ids = list(prompt)
                bad = [t for t in ids if t < 0 or t >= self.vocab_size]
                if bad:
                    raise ValueError(f"Prompt {first_index + i} has token id {bad[0]} outside the vocabulary "
                                     f"(size {self.vocab_size})")
                out[i] = TokenizedPrompt(
                    self.truncate_ids(ids, limit, side) if limit is not None and len(ids) > limit else ids,
                    num_input_tokens=len(ids))
        result = [p for p in out if p is not None]
        self.check(result, first_index, max_len)
        return result

    def encode_pairs(
        self, lefts: Sequence[str], rights: Sequence[str], truncate_prompt_tokens: int | None = None
    ) -> list[TokenizedPrompt]:
        """Cross-encoder pairs with the tokenizer's own pair template and token_type_ids."""
        limit = self.resolve_truncation(truncate_prompt_tokens)
        if not all(isinstance(t, str) for t in (*lefts, *rights)):
            raise TypeError("Cross-encoder scoring takes text prompts, not token ids")
        lefts = [self.prepare_text(t) for t in lefts]
        rights = [self.prepare_text(t) for t in rights]
        enc = self.tokenizer(list(lefts), list(rights), add_special_tokens=True, truncation=False, verbose=False)
        lengths = [len(ids) for ids in enc["input_ids"]]
        if limit is not None and any(n > limit for n in lengths):
            enc = self.tokenizer(list(lefts), list(rights), add_special_tokens=True, truncation=True,
                                 max_length=limit, verbose=False)
        types = enc.get("token_type_ids")
        result = [
            TokenizedPrompt(list(ids), list(types[i]) if types is not None else None, num_input_tokens=lengths[i])
            for i, ids in enumerate(enc["input_ids"])
        ]
        self.check(result)
        return result

    def encode_templated_pairs(
        self, lefts: Sequence[str], rights: Sequence[str], template: str, truncate_prompt_tokens: int | None = None
    ) -> list[TokenizedPrompt]:
        """Pairs as one text each, ``template.format(query=..., document=...)`` (an LLM reranker's prompt).

        Truncation shortens the document, never the template around it: such models answer at the
        template's last token.
        """
        limit = self.resolve_truncation(truncate_prompt_tokens)
        if not all(isinstance(t, str) for t in (*lefts, *rights)):
            raise TypeError("Cross-encoder scoring takes text prompts, not token ids")
        pairs = [(self.prepare_text(q), self.prepare_text(d)) for q, d in zip(lefts, rights)]
        texts = [template.format(query=q, document=d) for q, d in pairs]
        result = []
        for index, ((query, document), ids) in enumerate(zip(pairs, self.text_ids(texts))):
            fitted = ids
            if limit is not None and len(fitted) > limit:
                fitted = self._fit_document(template, query, document, limit, index)
            result.append(TokenizedPrompt(fitted, num_input_tokens=len(ids)))
        self.check(result)
        return result

    def _fit_document(self, template: str, query: str, document: str, limit: int, index: int) -> list[int]:
        """The templated pair's ids with the document cut at a token boundary so the whole fits ``limit``."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("Truncating a templated pair needs a fast (Rust) tokenizer")
        offsets = self.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True,
                                 verbose=False)["offset_mapping"]
        keep = len(offsets)
        ids = self.tokenizer(template.format(query=query, document=document), verbose=False)["input_ids"]
        while keep > 0:
            keep = max(0, keep - max(len(ids) - limit, 1))
            cut = document[: offsets[keep - 1][1]] if keep else ""
            ids = self.tokenizer(template.format(query=query, document=cut), verbose=False)["input_ids"]
            if len(ids) <= limit:
                return list(ids)
        raise ValueError(
            f"Prompt {index}: the score template and the query alone have {len(ids)} tokens, more than the "
            f"{limit} allowed; shorten the query"
        )

    def check(self, prompts: Sequence[TokenizedPrompt], first_index: int = 0, max_len: int | None = None) -> None:
        for index, prompt in enumerate(prompts, start=first_index):
            if prompt.image is not None:
                continue  # an image's size is the processor's, whatever the text limit
            if len(prompt) == 0:
                raise ValueError(f"Prompt {index} is empty: it has no tokens to pool")
            if max_len is not None and max_len != self.max_model_len:
                if len(prompt) > max_len:
                    raise ValueError(
                        f"Prompt {index} has {len(prompt)} tokens, more than max_embed_len={max_len}, the longest "
                        "input chunked processing takes. Raise max_embed_len in the pooler config, or pass "
                        "truncate_prompt_tokens=-1 to cut it at the model's limit instead."
                    )
                continue
            if len(prompt) > self.max_model_len:
                raise ValueError(
                    f"Prompt {index} has {len(prompt)} tokens, more than the model's maximum of "
                    f"{self.max_model_len} tokens. Shorten it, or pass truncate_prompt_tokens=-1 "
                    f"(truncate to the model's limit) or truncate_prompt_tokens=N with N <= {self.max_model_len}."
                )

"""Turning texts (and, for image-text models, images) into index-ready vectors with a ``poolkit.LLM``,
and preparing vectors.

Vectors in an index are float32, L2-normalized (cosine similarity = inner
product) and, for a Matryoshka plan, truncated to the plan's dimension and
re-normalized. The engine does the truncation itself when asked for
``PoolingParams(dimensions=d)``; for vectors passed in directly,
:func:`prepare_vectors` does the same, and refuses for models without
Matryoshka support with the engine's own message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256


def _matryoshka_refusal(model_name: str | None) -> str:
    from poolkit.params import matryoshka_unsupported

    return matryoshka_unsupported(model_name or "<unknown>")


def prepare_vectors(
    vectors: Any,
    dimension: int,
    *,
    matryoshka: bool,
    model_name: str | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Return a C-contiguous float32 ``(n, dimension)`` copy, normalized.

    Wider vectors are truncated to ``dimension`` (then re-normalized) only when
    ``matryoshka`` is true; otherwise this raises the engine's
    ``does not support matryoshka representation`` ``ValueError``.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    if x.shape[1] < dimension:
        raise ValueError(f"vectors have {x.shape[1]} dimensions; the index needs {dimension}")
    if x.shape[1] > dimension:
        if not matryoshka:
            raise ValueError(_matryoshka_refusal(model_name))
        x = x[:, :dimension]
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinity")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        np.divide(x, norms, out=x, where=norms > 0)
    return x


def check_llm(llm: Any, dimension: int) -> None:
    """Fail before any embedding when ``llm`` cannot produce ``dimension``-d vectors.

    A dimension below the model's goes through the engine's own validation,
    so a model without Matryoshka support raises the engine's ``ValueError``.
    """
    config = llm.model_config
    if config.task != "embed":
        raise ValueError(f"{config.served_model_name!r} is not an embedding model (task {config.task!r})")
    if dimension > config.embedding_dim:
        raise ValueError(
            f"the index needs {dimension}-d vectors; {config.served_model_name!r} embeds to {config.embedding_dim}"
        )
    if dimension < config.embedding_dim:
        from .planning import verify_dimension

        verify_dimension(config, dimension)


def _chunking_on(llm: Any, enable_chunked_processing: bool | None) -> bool:
    """Whether ``LLM.embed`` chunks long inputs: the argument, else the model's pooler config."""
    if enable_chunked_processing is not None:
        return bool(enable_chunked_processing)
    return bool(getattr(llm.model_config.pooler_config, "enable_chunked_processing", False))


def embed_texts(
    llm: Any,
    texts: Sequence[str],
    dimension: int | None = None,
    *,
    truncate_prompt_tokens: int | None = -1,
    prompt_name: str | None = None,
    prompt: str | None = None,
    enable_chunked_processing: bool | None = None,
) -> np.ndarray:
    """Embed ``texts`` with ``LLM.embed``: ``(len(texts), dimension)`` float32, normalized.

    ``truncate_prompt_tokens=-1`` (the default here) cuts texts longer than the
    model limit to that limit instead of raising: corpora have long passages.
    How many were cut is logged (a warning, from the engine's own count). Pass
    ``None`` to get the engine's error for over-long texts instead.

    ``enable_chunked_processing=True`` embeds texts longer than the model whole:
    in chunks that each fit, whose vectors the engine merges into one (see
    ``poolkit.tasks.chunking``). Chunking means no truncation, so
    ``truncate_prompt_tokens`` is then not applied (``None`` is passed to the
    engine; otherwise the engine's rule "truncation asked for wins" would cut
    the texts instead). ``None`` (the default): the model's pooler config decides
    (``override_pooler_config={"enable_chunked_processing": True}``), with the
    same effect on ``truncate_prompt_tokens`` when it is on; ``False``: never
    chunk. Texts longer than the model's ``max_embed_len`` raise ``ValueError``.

    ``prompt_name`` / ``prompt`` are ``LLM.embed``'s: a Sentence-Transformers prompt
    of the model (e.g. ``"document"`` for passages, ``"query"`` for questions) or a
    prompt text. Without either the model's default prompt applies, as in
    ``SentenceTransformer.encode``. The engine applies the prompt, so models that
    pool without the prompt's tokens get the same vectors as Sentence-Transformers.
    """
    from poolkit import PoolingParams

    full = int(llm.model_config.embedding_dim)
    dimension = dimension or full
    if not texts:
        return np.zeros((0, dimension), dtype=np.float32)
    chunked = _chunking_on(llm, enable_chunked_processing)
    if chunked:
        truncate_prompt_tokens = None  # chunking embeds whole texts; a limit here would win over it
    # The engine truncates Matryoshka vectors itself (and refuses for models without support).
    # dense vectors only: a sparse or multi-vector model is refused by the engine with its own message
    params = PoolingParams(dimensions=dimension if dimension < full else None, output="dense")
    outputs = llm.embed(
        list(texts),
        pooling_params=params,
        truncate_prompt_tokens=truncate_prompt_tokens,
        use_tqdm=False,
        prompt_name=prompt_name,
        prompt=prompt,
        enable_chunked_processing=enable_chunked_processing,
    )
    truncated = sum(o.truncated for o in outputs)
    if truncated:  # never with chunking: nothing is cut then
        logger.warning("%d of %d texts were longer than %s and were truncated (truncate_prompt_tokens=%s; "
                       "enable_chunked_processing=True embeds them whole)",
                       truncated, len(outputs), "the model's limit" if truncate_prompt_tokens == -1
                       else f"{truncate_prompt_tokens} tokens", truncate_prompt_tokens)
    x = np.stack([o.outputs.numpy() for o in outputs])
    return prepare_vectors(x, dimension, matryoshka=False, model_name=llm.model_config.served_model_name)


def check_images(llm: Any) -> None:
    """Refuse, before any work, to embed images with a model that takes text only."""
    config = llm.model_config
    modalities = tuple(getattr(config, "modalities", ("text",)))
    if "image" not in modalities:
        raise ValueError(f"Model {config.served_model_name!r} takes text only (modalities: {list(modalities)}): "
                         "embedding images needs an image-text model such as CLIP or SigLIP")


def _image_prompt(image: Any, index: int) -> dict[str, Any]:
    """``LLM.embed``'s prompt for one image; a ``data:`` / ``http(s)`` URL string is loaded here first
    (``poolkit.media``, with its limits), since the engine reads a string as a file path."""
    if isinstance(image, str) and image[:8].lower().startswith(("data:", "http://", "https://")):
        from poolkit.media import MediaError, load_image_url

        try:
            image = load_image_url(image)
        except MediaError as exc:
            raise ValueError(f"Image {index}: {exc}") from None
    return {"multi_modal_data": {"image": image}}


def embed_images(llm: Any, images: Sequence[Any], dimension: int | None = None) -> np.ndarray:
    """Embed ``images`` with ``LLM.embed``: ``(len(images), dimension)`` float32, normalized.

    The image counterpart of :func:`embed_texts` for image-text models (CLIP, SigLIP), whose
    image vectors share one space with their text vectors: index images, search them with
    texts (``VectorIndex.search_texts``). Each image is what ``LLM.embed`` takes in
    ``{"multi_modal_data": {"image": ...}}``: a ``PIL.Image``, a NumPy array, encoded bytes, a
    ``pathlib.Path`` or a ``str`` file path; ``data:`` and ``http(s)://`` URL strings are loaded
    first (``poolkit.media.load_image_url``). A text-only model is refused with a ``ValueError``.
    """
    from poolkit import PoolingParams

    check_images(llm)
    full = int(llm.model_config.embedding_dim)
    dimension = dimension or full
    if not len(images):
        return np.zeros((0, dimension), dtype=np.float32)
    params = PoolingParams(dimensions=dimension if dimension < full else None, output="dense")
    prompts = [_image_prompt(image, i) for i, image in enumerate(images)]
    outputs = llm.embed(prompts, pooling_params=params, use_tqdm=False)
    x = np.stack([o.outputs.numpy() for o in outputs])
    return prepare_vectors(x, dimension, matryoshka=False, model_name=llm.model_config.served_model_name)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))

"""What every endpoint needs, in one object: the engine, the HTTP limits, the metrics, the served names.

``build_app`` stores one :class:`ServerContext` on ``app.state``; handlers get it
with the :data:`Context` dependency, so endpoint modules hold no globals and
several apps can live in one process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from ...async_engine import AsyncPoolingEngine
from ...config import ModelConfig
from ...media import MediaLimits
from ...outputs import RequestOutput
from ..server_args import ServerArgs
from .errors import APIError, engine_errors
from .metrics import ServerMetrics
from .middleware import Shutdown
from .protocol import PromptInput, UsageInfo

# A UTF-16 surrogate code point in a Python string: JSON's "\ud800" without its pair (a valid pair is decoded to
# one character), which cannot be encoded as UTF-8 nor tokenized.
_SURROGATE = re.compile("[\ud800-\udfff]")


class ServerContext:
    """The engine and settings behind an app, with the checks shared by its endpoints."""

    def __init__(self, engine: AsyncPoolingEngine, settings: ServerArgs, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.model_config: ModelConfig = engine.model_config
        # Every name clients may use; the first is reported back (the engine's settings hold them all).
        self.served_names = list(engine.llm.args.served_model_name or [self.model_config.served_model_name])
        self.created = int(time.time())
        self.shutdown = Shutdown()  # expired by the server once shutdown_timeout has passed after SIGTERM
        self.media_limits = MediaLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
            timeout=settings.media_fetch_timeout,
            allowed_media_domains=frozenset(settings.allowed_media_domains) if settings.allowed_media_domains
            else None,
            allowed_local_media_path=Path(settings.allowed_local_media_path) if settings.allowed_local_media_path
            else None)

    @property
    def supported_methods(self) -> frozenset[str]:
        return self.model_config.supported_methods

    def check_model(self, model: str | None) -> str:
        """The served name to report back: ``model`` if served, the first name if omitted; else 404."""
        if not model:
            return self.served_names[0]
        if model not in self.served_names:
            raise APIError(404, f"The model `{model}` does not exist.")
        return model

    def prompts(self, value: PromptInput, field_name: str = "input") -> list[Any]:
        """``input`` as a list of prompts (texts or token-id lists), checked by :meth:`check_items`."""
        if isinstance(value, str):
            items: list[Any] = [value]
        elif value and isinstance(value[0], int):
            items = [value]
        else:
            items = list(value)
        self.check_items(items, field_name)
        return items

    def texts(self, value: str | Sequence[str], field_name: str) -> list[str]:
        """A text or a list of texts as a list, checked by :meth:`check_items`."""
        items = [value] if isinstance(value, str) else list(value)
        self.check_items(items, field_name)
        return items

    def check_items(self, items: Sequence[Any], field_name: str) -> None:
        """Reject, before tokenizing, empty inputs, texts that are not valid Unicode and inputs over this
        server's limits (400)."""
        if not items:
            raise APIError(400, f"'{field_name}' must not be empty")
        max_items, max_chars = self.settings.max_inputs_per_request, self.settings.max_input_chars
        if len(items) > max_items:
            raise APIError(400, f"'{field_name}' has {len(items)} items, more than this server's limit of "
                                f"{max_items} per request")
        for i, item in enumerate(items):
            if len(item) == 0:
                kind = "an empty string" if isinstance(item, str) else "an empty list of token ids"
                raise APIError(400, f"'{field_name}' item {i} is {kind}; inputs must not be empty")
            if isinstance(item, str):
                if len(item) > max_chars:
                    raise APIError(400, f"'{field_name}' item {i} has {len(item)} characters, more than this "
                                        f"server's limit of {max_chars} characters")
                check_unicode(item, f"'{field_name}' item {i}")

    def check_request_chars(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Reject (400), before tokenizing, a request whose texts have more than ``max_request_chars``
        characters in all (a ``prompt`` put before every text counts once per text)."""
        texts, chars = _count_texts(args)
        prompt = kwargs.get("prompt")
        if isinstance(prompt, str):
            check_unicode(prompt, "'prompt'")
            chars += len(prompt) * texts
        limit = self.settings.max_request_chars
        if chars > limit:
            raise APIError(400, f"The inputs of this request have {chars} characters in all, more than this "
                                f"server's limit of {limit} characters per request")

    async def process(self, task: str, *args: Any, **kwargs: Any) -> list[RequestOutput[Any]]:
        """``engine.process(task, ...)`` with the engine's errors as HTTP errors, after the request-wide
        character limit (checked before anything is tokenized)."""
        self.check_request_chars(args, kwargs)
        with engine_errors():
            return await self.engine.process(task, *args, **kwargs)

    def usage(self, endpoint: str, outputs: Sequence[RequestOutput[Any]]) -> UsageInfo:
        """Token usage of a request: every token the model ran (a chunked long input's chunks included); also
        counted in the ``poolkit_prompt_tokens`` metric of ``endpoint``."""
        total = sum(o.num_processed_tokens for o in outputs)
        self.metrics.add_prompt_tokens(endpoint, total)
        return UsageInfo(prompt_tokens=total, total_tokens=total, truncated_inputs=sum(o.truncated for o in outputs))


def check_unicode(text: str, what: str) -> None:
    """400 for a text with a lone surrogate (``"\\ud800"`` in JSON), before the tokenizer fails on it obscurely."""
    match = _SURROGATE.search(text)
    if match is not None:
        raise APIError(400, f"{what} is not valid Unicode (lone surrogate U+{ord(match.group()):04X} at "
                            f"character {match.start()})")


def _count_texts(value: Any) -> tuple[int, int]:
    """(texts, characters) in the prompts of a request's arguments (token-id lists count as no text)."""
    if isinstance(value, str):
        return 1, len(value)
    texts = chars = 0
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (str, list, tuple)):
                t, c = _count_texts(item)
                texts += t
                chars += c
    return texts, chars


async def get_context(request: Request) -> ServerContext:
    """(``async``: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop per request.)"""
    context: ServerContext = request.app.state.context
    return context


Context = Annotated[ServerContext, Depends(get_context)]

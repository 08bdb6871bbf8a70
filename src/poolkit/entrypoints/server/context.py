"""What every endpoint needs, in one object: the engine, the HTTP limits, the metrics, the served names.

``build_app`` stores one :class:`ServerContext` on ``app.state``; handlers get it
with the :data:`Context` dependency, so endpoint modules hold no globals and
several apps can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Request

from ...async_engine import AsyncPoolingEngine
from ...config import ModelConfig
from ...outputs import RequestOutput
from ..server_args import ServerArgs
from .errors import APIError, engine_errors
from .metrics import ServerMetrics
from .protocol import PromptInput, UsageInfo


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
        """Reject, before tokenizing, empty inputs and inputs over this server's limits (400)."""
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
            if isinstance(item, str) and len(item) > max_chars:
                raise APIError(400, f"'{field_name}' item {i} has {len(item)} characters, more than this server's "
                                    f"limit of {max_chars} characters")

    async def process(self, task: str, *args: Any, **kwargs: Any) -> list[RequestOutput[Any]]:
        """``engine.process(task, ...)`` with the engine's errors as HTTP errors."""
        with engine_errors():
            return await self.engine.process(task, *args, **kwargs)

    def usage(self, endpoint: str, outputs: Sequence[RequestOutput[Any]]) -> UsageInfo:
        """Token usage of a request (also counted in the ``poolkit_prompt_tokens`` metric of ``endpoint``)."""
        total = sum(len(o.prompt_token_ids) for o in outputs)
        self.metrics.add_prompt_tokens(endpoint, total)
        return UsageInfo(prompt_tokens=total, total_tokens=total, truncated_inputs=sum(o.truncated for o in outputs))


def get_context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.context
    return context


Context = Annotated[ServerContext, Depends(get_context)]

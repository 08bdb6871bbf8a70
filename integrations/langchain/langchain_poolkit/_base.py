"""Configuration shared by the Embeddings and the reranker: which engine, where, and how to reach it."""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.utils import secret_from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from ._backends import Backend, LocalBackend, RemoteBackend, is_llm, llm_init_parameters, load_llm

logger = logging.getLogger("langchain_poolkit")


class PoolkitClientBase(BaseModel):
    """Picks the backend: ``llm=`` an existing engine, ``base_url=`` a server, else ``model=`` loaded here.

    Keyword arguments that are not fields are ``poolkit.LLM`` arguments
    (``dtype``, ``device``, ``hf_overrides``, ``max_model_len`` …) and are
    collected into ``engine_kwargs``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=())

    model: str | None = None
    """Checkpoint path or hub id to load in-process (``None``: the bundled
    all-MiniLM-L6-v2), or, with ``base_url``, the served model name to request."""

    llm: Any | None = Field(default=None, exclude=True)
    """An already loaded ``poolkit.LLM`` to use (shared, not copied)."""

    base_url: str | None = None
    """URL of a ``poolkit serve`` server (``http://host:port`` or ``…/v1``); selects server mode."""

    api_key: SecretStr | None = Field(default_factory=secret_from_env("POOLKIT_API_KEY", default=None))
    """Bearer token for the server (env ``POOLKIT_API_KEY``)."""

    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra ``poolkit.LLM(...)`` arguments for in-process loading."""

    truncate_prompt_tokens: int | None = -1
    """``-1`` (default): cut over-long inputs at the model's limit (a warning is
    logged once); ``N``: cut at N tokens; ``None``: over-long inputs raise ``ValueError``."""

    timeout: float = 120.0
    """Server mode: seconds per HTTP request."""

    max_retries: int = 2
    """Server mode: retries on 429/502/503/504 and connection errors."""

    _backend: Backend | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _collect_engine_kwargs(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        extra = {k: values[k] for k in list(values) if k not in known}
        if extra:
            values = {k: v for k, v in values.items() if k not in extra}
            values["engine_kwargs"] = {**(values.get("engine_kwargs") or {}), **extra}
        return values

    @model_validator(mode="after")
    def _build_backend(self) -> PoolkitClientBase:
        from poolkit.params import check_truncate_prompt_tokens

        # Checked here too (not only by the engine) so that a bad value fails at construction, also in server mode.
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if self.base_url is not None:
            if self.llm is not None:
                raise ValueError("Pass either llm= (in-process) or base_url= (server), not both")
            if self.engine_kwargs:
                raise ValueError(
                    f"Engine arguments {sorted(self.engine_kwargs)} only apply in-process; "
                    "they have no effect with base_url= (configure the server instead)"
                )
            self._backend = RemoteBackend(
                self.base_url,
                api_key=self.api_key.get_secret_value() if self.api_key else None,
                model=self.model,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
            return self
        if self.llm is not None:
            if not is_llm(self.llm):
                raise TypeError(f"llm= must be a poolkit.LLM, got {type(self.llm).__name__}")
            if self.model is not None or self.engine_kwargs:
                raise ValueError("llm= is an already loaded engine: do not also pass model= or engine arguments")
        else:
            unknown = sorted(set(self.engine_kwargs) - llm_init_parameters())
            if unknown:
                raise TypeError(
                    f"{type(self).__name__} got unexpected argument(s) {unknown}: not a field of "
                    f"{type(self).__name__} and not a poolkit.LLM argument"
                )
            self.llm = load_llm(self.model, self.engine_kwargs)
        self._backend = LocalBackend(self.llm)
        return self

    @property
    def backend(self) -> Backend:
        assert self._backend is not None
        return self._backend

    @property
    def mode(self) -> str:
        """``"in-process"`` or ``"server"``."""
        return self.backend.kind

    @property
    def model_name(self) -> str:
        """The engine's served model name (or the name requested from the server)."""
        return self.backend.model_name

    def close(self) -> None:
        """Close the HTTP connection pool (server mode); in-process engines are left alone (they may be shared)."""
        if isinstance(self._backend, RemoteBackend):
            self._backend.close()

    def _repr_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"mode": self.mode, "model": self.model_name}
        if isinstance(self.backend, RemoteBackend):
            fields["base_url"] = self.backend.base_url
            fields["api_key"] = "***" if self.api_key else None
        else:
            mc = self.backend.llm.model_config
            fields.update(task=mc.task, max_model_len=mc.max_model_len)
        fields["truncate_prompt_tokens"] = self.truncate_prompt_tokens
        return fields

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({inner})"

    __str__ = __repr__

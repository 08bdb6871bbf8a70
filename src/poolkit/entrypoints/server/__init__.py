"""The OpenAI-compatible HTTP server, one module per endpoint family (like vLLM's entrypoints).

``app`` assembles :func:`build_app`; ``run`` is ``poolkit serve``; ``protocol``
holds every request/response schema; ``context``, ``errors``, ``middleware`` and
``responses`` are what the endpoint modules share.
"""

from .app import build_app
from .run import run_server

__all__ = ["build_app", "run_server"]

"""``poolkit serve``: load the model, warm it up, and serve it with uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging

from ...async_engine import AsyncPoolingEngine
from ...engine import LLM
from ..server_args import ServerArgs
from .app import build_app
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)


def run_server(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM, then stop accepting connections, drain in-flight requests and exit."""
    import uvicorn

    from ... import settings
    from ..cli import engine_args

    server_args = settings.from_arguments(ServerArgs, args)
    try:
        llm = LLM.from_engine_args(engine_args(args))
    except (ValueError, TypeError, OSError) as exc:  # bad model, task or flags: one clear line, no traceback
        logger.debug("Model loading failed", exc_info=True)
        raise SystemExit(f"poolkit serve: error: {exc}") from None
    _warm_up(llm)
    metrics = ServerMetrics()
    app = build_app(_async_engine(llm, server_args, metrics), server_args, metrics)
    config = uvicorn.Config(
        app,
        host=server_args.host,
        port=server_args.port,
        log_level=server_args.uvicorn_log_level,
        access_log=not server_args.disable_access_log,
        timeout_graceful_shutdown=server_args.shutdown_timeout,  # type: ignore[arg-type]  # a float works
        timeout_keep_alive=server_args.keep_alive_timeout,
    )
    uvicorn.Server(config).run()
    return 0


def _async_engine(llm: LLM, server_args: ServerArgs, metrics: ServerMetrics) -> AsyncPoolingEngine:
    return AsyncPoolingEngine(llm, server_args, stats=metrics)


def _warm_up(llm: LLM) -> None:
    """One tiny forward pass, so the first request does not pay for lazy initialisation."""
    try:
        llm.execute(llm.prepare("encode", ["warm up"]))
    except Exception:  # a model that cannot even pool "warm up" will fail loudly on requests instead
        logger.warning("Warm-up pass failed", exc_info=True)

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
    """Serve until SIGINT/SIGTERM, then stop accepting connections, drain in-flight requests and exit.

    In-flight requests get ``shutdown_timeout`` seconds to finish; those still running are then answered 503.
    SIGTERM returns 0 once stopped; SIGINT raises ``KeyboardInterrupt`` (the CLI exits 130).
    """
    import uvicorn

    from ... import settings
    from ..cli import engine_args
    from .uvicorn_server import SHUTDOWN_BACKSTOP_S, PoolkitH11Protocol, PoolkitServer

    try:
        server_args = settings.from_arguments(ServerArgs, args)
    except ValueError as exc:
        raise SystemExit(f"poolkit serve: error: {exc}") from None
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
        http=PoolkitH11Protocol.configured(server_args, metrics),
        log_level=server_args.uvicorn_log_level,
        access_log=not server_args.disable_access_log,
        # A backstop: at shutdown_timeout PoolkitServer has the middleware answer what still runs (503).
        timeout_graceful_shutdown=server_args.shutdown_timeout + SHUTDOWN_BACKSTOP_S,  # type: ignore[arg-type]
        timeout_keep_alive=server_args.keep_alive_timeout,
    )
    PoolkitServer(config, app.state.context.shutdown, server_args.shutdown_timeout).run()
    return 0


def _async_engine(llm: LLM, server_args: ServerArgs, metrics: ServerMetrics) -> AsyncPoolingEngine:
    return AsyncPoolingEngine(llm, server_args, stats=metrics)


def _warm_up(llm: LLM) -> None:
    """One tiny forward pass, so the first request does not pay for lazy initialisation."""
    try:
        llm.execute(llm.prepare("encode", ["warm up"]))
    except Exception:  # a model that cannot even pool "warm up" will fail loudly on requests instead
        logger.warning("Warm-up pass failed", exc_info=True)

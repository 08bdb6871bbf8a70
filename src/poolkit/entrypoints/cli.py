"""The ``poolkit`` command: ``poolkit serve MODEL [flags]`` (flags follow vLLM) and ``poolkit embed``.

Flags are generated from the settings declarations (:class:`poolkit.settings.EngineArgs`,
:class:`~poolkit.entrypoints.server_args.ServerArgs`): every flag also reads its
``POOLKIT_<NAME>`` variable (``POOLKIT_API_KEY``, ``POOLKIT_PORT``, ``POOLKIT_DTYPE`` …)
and the command line wins; ``--help`` shows the effective defaults. Flags may be
spelled with ``_`` or ``-`` (``--hf_overrides`` = ``--hf-overrides``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import settings
from ..settings import EngineArgs

logger = logging.getLogger("poolkit")


class FlexibleArgumentParser(argparse.ArgumentParser):
    """Accepts ``--foo_bar`` for ``--foo-bar`` (as vLLM does)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        fixed = []
        for arg in args:
            if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
                key, sep, value = arg.partition("=")
                arg = key.replace("_", "-") + sep + value
            fixed.append(arg)
        return super().parse_known_args(fixed, namespace)


def add_engine_args(parser: argparse.ArgumentParser, *, model_flag: bool = False) -> None:
    """The flags of ``EngineArgs``; the model is a positional argument, or ``--model`` with ``model_flag``."""
    group = parser.add_argument_group("model and engine")
    settings.add_arguments(group, EngineArgs, exclude=("model",))
    model_help = "checkpoint directory or hub id; 'default' is the bundled all-MiniLM-L6-v2 (env POOLKIT_MODEL)"
    default = settings.from_environ(EngineArgs).get("model", "default")
    if model_flag:
        parser.add_argument("--model", default=default, help=model_help + "; default: %(default)s")
    else:
        parser.add_argument("model", nargs="?", default=default, help=model_help + "; default: %(default)s")


def engine_args(args: argparse.Namespace) -> EngineArgs:
    """``EngineArgs`` from parsed flags (``LLM.from_engine_args(engine_args(args))``)."""
    return settings.from_arguments(EngineArgs, args)


def _serve(args: argparse.Namespace) -> int:
    from .server import run_server

    return run_server(args)


def _add_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="Serve a pooling model over an OpenAI-compatible HTTP API",
        description="Serve MODEL (a local checkpoint, a hub id, or 'default' for the bundled all-MiniLM-L6-v2) "
                    "over /v1/embeddings, /pooling, /classify, /score, /rerank … Flags follow vLLM.",
    )
    from .server_args import ServerArgs

    add_engine_args(parser)
    settings.add_arguments(parser.add_argument_group("HTTP server, batching and limits"), ServerArgs)
    parser.set_defaults(func=_serve)


# name → function adding the subparser; extend to add commands (e.g. "embed").
def _add_embed(subparsers: Any) -> None:
    from .embed import add_embed_parser

    add_embed_parser(subparsers)


SUBCOMMANDS: dict[str, Callable[[Any], None]] = {"serve": _add_serve, "embed": _add_embed}


def make_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = FlexibleArgumentParser(prog="poolkit", description="poolkit: fast serving of pooling models")
    parser.add_argument("--version", action="version", version=f"poolkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(getattr(args, "log_level", "info"))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C after the server drained (or mid-job): no traceback
        logger.info("Interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

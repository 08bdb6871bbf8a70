"""The ``poolkit`` command: ``poolkit serve MODEL [flags]`` (flags follow vLLM).

Subcommands are registered in :data:`SUBCOMMANDS`; engine flags come from
:func:`add_engine_args` / :func:`engine_kwargs`, so another subcommand (say
``poolkit embed``) can load a model exactly the way ``serve`` does.

Every flag of ``serve`` also reads an environment variable ``POOLKIT_<FLAG>``
(``POOLKIT_API_KEY``, ``POOLKIT_PORT``, ``POOLKIT_BATCH_WAIT_MS`` …); the
command line wins. Flags may be spelled with ``_`` or ``-``
(``--hf_overrides`` = ``--hf-overrides``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..corpus import add_embed_parser

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


def _env(flag: str, default: Any = None, cast: Callable[[str], Any] = str) -> Any:
    value = os.environ.get("POOLKIT_" + flag.upper().replace("-", "_"))
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"poolkit: invalid environment variable POOLKIT_{flag.upper().replace('-', '_')}={value!r}: {exc}")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _bool_env(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Flags that configure ``LLM(...)``: shared by every subcommand that loads a model."""
    group = parser.add_argument_group("model and engine")
    group.add_argument("--task", default=_env("task", "auto"),
                       choices=["auto", "embed", "classify", "score", "reward", "encode"],
                       help="What to serve; auto picks from the architecture (default: %(default)s)")
    group.add_argument("--served-model-name", nargs="+", default=_env("served_model_name", None, str.split),
                       metavar="NAME",
                       help="Name(s) clients use in 'model' (default: the model id); the first is reported back")
    group.add_argument("--override-pooler-config", type=_json_object, default=_env("override_pooler_config", None),
                       metavar="JSON", help='e.g. \'{"pooling_type": "MEAN", "normalize": true}\'')
    group.add_argument("--hf-overrides", type=_json_object, default=_env("hf_overrides", None), metavar="JSON",
                       help='merged into config.json, e.g. \'{"matryoshka_dimensions": [128, 256]}\'')
    group.add_argument("--trust-remote-code", action="store_true", default=_env("trust_remote_code", False, _bool_env))
    group.add_argument("--dtype", default=_env("dtype", "auto"),
                       help="auto, float32, bfloat16 or float16 (default: %(default)s)")
    group.add_argument("--device", default=_env("device", "auto"), help="auto, cpu, cuda, cuda:1 … (default: %(default)s)")
    group.add_argument("--max-model-len", type=int, default=_env("max_model_len", None, int),
                       help="Lower the model's length limit (tokens)")
    group.add_argument("--max-num-batched-tokens", type=int, default=None,
                       help="Tokens per forward pass (env POOLKIT_MAX_BATCHED_TOKENS)")
    group.add_argument("--max-num-seqs", type=int, default=None, help="Rows per forward pass (env POOLKIT_MAX_NUM_SEQS)")
    group.add_argument("--compile", choices=["auto", "on", "off"], default=None,
                       help="torch.compile the model per length bucket (env POOLKIT_COMPILE; default off)")
    group.add_argument("--packing", choices=["auto", "on", "off"], default=None,
                       help="Padding-free batches where the model supports them (env POOLKIT_PACKING; default auto)")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``LLM(**engine_kwargs(args))``; ``default`` (or no model) is the bundled all-MiniLM-L6-v2."""
    model = getattr(args, "model", None)
    if model in (None, "", "default"):
        model = None
    names = args.served_model_name
    override = args.override_pooler_config
    hf = args.hf_overrides
    return {
        "model": model,
        "task": args.task,
        "override_pooler_config": _json_object(override) if isinstance(override, str) else override,
        "hf_overrides": _json_object(hf) if isinstance(hf, str) else hf,
        "trust_remote_code": args.trust_remote_code,
        "dtype": args.dtype,
        "device": args.device,
        "max_model_len": args.max_model_len,
        "served_model_name": names[0] if names else None,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "compile": getattr(args, "compile", None),
        "packing": getattr(args, "packing", None),
    }


def add_server_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HTTP server")
    group.add_argument("--host", default=_env("host", "127.0.0.1"), help="(default: %(default)s)")
    group.add_argument("--port", type=int, default=_env("port", 8000, int), help="(default: %(default)s)")
    group.add_argument("--api-key", default=_env("api_key", None),
                       help="Require 'Authorization: Bearer KEY' on every route but /health (env POOLKIT_API_KEY)")
    group.add_argument("--log-level", default=_env("log_level", "info"),
                       choices=["debug", "info", "warning", "error", "critical"])
    group.add_argument("--uvicorn-log-level", default=_env("uvicorn_log_level", "info"),
                       choices=["debug", "info", "warning", "error", "critical", "trace"])
    group.add_argument("--disable-access-log", action="store_true",
                       default=_env("disable_access_log", False, _bool_env), help="No per-request log lines")
    group.add_argument("--shutdown-timeout", type=float, default=_env("shutdown_timeout", 30.0, float),
                       help="Seconds to wait for in-flight requests on SIGTERM/SIGINT (default: %(default)s)")
    group.add_argument("--keep-alive-timeout", type=int, default=_env("keep_alive_timeout", 5, int),
                       help="Idle keep-alive seconds (default: %(default)s)")
    limits = parser.add_argument_group("batching and limits")
    limits.add_argument("--batch-wait-ms", type=float, default=_env("batch_wait_ms", 2.0, float),
                        help="Window after the latest request for others to join the batch (default: %(default)s)")
    limits.add_argument("--max-batch-wait-ms", type=float, default=_env("max_batch_wait_ms", None, float),
                        help="Longest a request waits for batch partners (default: 10 x --batch-wait-ms)")
    limits.add_argument("--max-batch-tokens", type=int, default=_env("max_batch_tokens", None, int),
                        help="Prompt tokens merged into one engine call (default: the engine's batch token budget)")
    limits.add_argument("--max-queued-tokens", type=int, default=_env("max_queued_tokens", 1 << 20, int),
                        help="Queued tokens beyond which requests get 429 + Retry-After (default: %(default)s)")
    limits.add_argument("--max-inputs-per-request", type=int, default=_env("max_inputs_per_request", 2048, int),
                        help="(default: %(default)s, as OpenAI)")
    limits.add_argument("--max-input-chars", type=int, default=_env("max_input_chars", 100_000, int),
                        help="Characters per input, checked before tokenizing (default: %(default)s)")
    limits.add_argument("--max-request-bytes", type=int, default=_env("max_request_bytes", 64 << 20, int),
                        help="Largest request body (Content-Length) accepted (default: %(default)s)")


def _serve(args: argparse.Namespace) -> int:
    from .api_server import run_server

    return run_server(args)


def _add_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="Serve a pooling model over an OpenAI-compatible HTTP API",
        description="Serve MODEL (a local checkpoint, a hub id, or 'default' for the bundled all-MiniLM-L6-v2) "
                    "over /v1/embeddings, /pooling, /classify, /score, /rerank … Flags follow vLLM.",
    )
    parser.add_argument("model", nargs="?", default=_env("model", "default"),
                        help="Checkpoint directory or hub id (default: %(default)s = the bundled model)")
    add_engine_args(parser)
    add_server_args(parser)
    parser.set_defaults(func=_serve)


# name → function adding the subparser; extend to add commands (e.g. "embed").
SUBCOMMANDS: dict[str, Callable[[Any], None]] = {"serve": _add_serve, "embed": add_embed_parser}


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

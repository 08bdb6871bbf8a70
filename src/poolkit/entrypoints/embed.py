"""``poolkit embed INPUT --out DIR``: embed a corpus (a text column, or an image column for image-text models)
into resumable Parquet shards (see :mod:`poolkit.corpus`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any

from ..corpus import (
    BUILTIN_EXECUTORS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    ENTRY_POINT_GROUP,
    CorpusSummary,
    available_executors,
    embed_corpus,
    executor_entry_points,
)
from .cli import FlexibleArgumentParser, add_engine_args, engine_args


def _truncate_arg(value: str) -> int | None:
    if value.lower() in ("none", "off", "no"):
        return None
    number = int(value)
    if number != -1 and number < 1:
        raise argparse.ArgumentTypeError("--truncate takes -1 (the model's limit), a positive token count, or none")
    return number


def _engine_arg(value: str) -> str:
    """An installed executor's name. Checked when parsed (not when the parser is built), so that
    building the ``poolkit`` parser never scans the installed packages' entry points."""
    if value in BUILTIN_EXECUTORS or value in executor_entry_points():
        return value
    raise argparse.ArgumentTypeError(f"unknown executor {value!r}; installed: {', '.join(available_executors())}")


def add_embed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``poolkit embed``; model/engine flags are the same as ``poolkit serve``'s."""
    parser.add_argument("input", metavar="INPUT", help="a .jsonl (one JSON object a line) or .parquet file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (Parquet shards + manifest.json)")
    job = parser.add_argument_group("corpus job")
    job.add_argument("--engine", type=_engine_arg, default="local", metavar="EXECUTOR",
                     help="where shards run: local (this process) or an installed executor, registered under "
                          f"the {ENTRY_POINT_GROUP!r} entry points (ray: Ray Data actor pool, with poolkit-ray; "
                          "lightning: Trainer.predict, with poolkit-lightning); default: %(default)s")
    job.add_argument("--text-column", default=None, help="field/column with the text (default: text)")
    job.add_argument("--image-column", default=None, metavar="COLUMN",
                     help="embed images instead of texts, with an image-text model (CLIP, SigLIP): the field/column "
                          "with image file paths (relative ones from the input file's folder) or, in Parquet, "
                          "encoded image bytes; replaces --text-column. Output shards as for texts")
    job.add_argument("--id-column", default="id",
                     help="field/column with row ids (default: %(default)s; if absent, row numbers are the ids)")
    job.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                     help="rows per output shard, the unit of resumption (default: %(default)s)")
    job.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                     help="rows handed to the engine at once (default: %(default)s)")
    job.add_argument("--dimensions", type=int, default=None, help="Matryoshka output dimensions")
    job.add_argument("--truncate", type=_truncate_arg, default=-1,
                     help="cut over-long texts to N tokens; -1 (default) = the model's limit; "
                          "none = fail on over-long texts. Truncated rows are counted in the summary")
    job.add_argument("--chunked", action="store_true",
                     help="embed texts longer than the model in chunks, merged into one vector per text "
                          "(enable_chunked_processing); implies no truncation, so --truncate with a token count "
                          "is refused with it. A chunked row's num_tokens is its whole text's token count, "
                          "truncated false; texts over the model's max_embed_len (default 32 x its limit) fail")
    job.add_argument("--prompt-name", default=None,
                     help="a Sentence-Transformers prompt of the model put before every text (default: the "
                          "model's default prompt, if any)")
    job.add_argument("--prompt", default=None, help="a prompt text put before every text")
    job.add_argument("--workers", type=int, default=None,
                     help="ray: actors (default: one per GPU, else per CPU); lightning: devices (default 1)")
    job.add_argument("--gpus-per-worker", type=float, default=None,
                     help="GPUs per Ray actor (default: 1 if the cluster has GPUs, else 0)")
    job.add_argument("--max-shards", type=int, default=None,
                     help="embed at most N pending shards in this run (rerun to continue)")
    job.add_argument("--overwrite", action="store_true", help="delete an earlier job's output in DIR first")
    job.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a TTY)")
    job.add_argument("--json", action="store_true", help="print the summary as JSON instead of one line")
    add_engine_args(parser, model_flag=True)
    return parser


def add_embed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``embed`` on the ``poolkit`` CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "embed", help="Embed a corpus (.jsonl/.parquet) into resumable Parquet shards",
        description="Embed a corpus into Parquet shards plus a manifest; a rerun skips finished shards. "
                    "Ends with a summary line on stdout (rows, tokens, seconds, throughput, truncated rows).",
    )
    add_embed_arguments(parser)
    parser.set_defaults(func=run_embed)
    return parser


def run_embed(args: argparse.Namespace) -> int:
    """Handler of ``poolkit embed``: runs the job, prints the summary to stdout."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = engine_args(args)
        if settings.task not in ("auto", "embed"):
            raise ValueError("--task must be embed (or auto)")
        if args.image_column is not None and args.text_column is not None:
            raise ValueError("--text-column and --image-column: a job embeds one column, give one of them")
        if args.chunked and args.truncate not in (-1, None):
            raise ValueError(f"--chunked embeds whole texts (in chunks) and cannot be combined with "
                             f"--truncate {args.truncate}; drop one of them")
        summary = _embed_from_args(args, settings)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise SystemExit(f"poolkit embed: error: {exc}") from exc
    if summary.primary:
        print(json.dumps(summary.to_dict()) if args.json else summary.line(), file=sys.stdout, flush=True)
    return 0


def _embed_from_args(args: argparse.Namespace, settings: Any) -> CorpusSummary:
    from ..settings import EngineArgs, setting_fields

    defaults = EngineArgs()
    changed = {f.name: getattr(settings, f.name) for f in setting_fields(EngineArgs)
               if f.name not in ("model", "task", "device") and getattr(settings, f.name) != getattr(defaults, f.name)}
    return embed_corpus(
        args.input, args.out, model=settings.model, engine=args.engine, text_column=args.text_column or "text",
        image_column=args.image_column, id_column=args.id_column or None, shard_size=args.shard_size,
        batch_size=args.batch_size,
        dimensions=args.dimensions, truncate=args.truncate, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, device=None if settings.device == "auto" else settings.device,
        overwrite=args.overwrite, max_shards=args.max_shards, progress=False if args.no_progress else None,
        engine_kwargs=changed, prompt_name=args.prompt_name, prompt=args.prompt, chunked=args.chunked,
    )


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m poolkit.entrypoints.embed INPUT --out DIR ...``: the same as ``poolkit embed``."""
    parser = add_embed_arguments(FlexibleArgumentParser(prog="poolkit embed", description=__doc__.splitlines()[0]))
    return run_embed(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

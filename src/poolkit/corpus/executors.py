"""Executors: where a corpus job's shards run (``poolkit embed --engine NAME``), as plugins.

The core ships one, :class:`LocalExecutor` (``local``: this process, one
model). Others live in their own packages and register a
:class:`CorpusExecutor` subclass under the ``poolkit.executors`` entry-point
group, e.g. in that package's ``pyproject.toml``::

    [project.entry-points."poolkit.executors"]
    slurm = "my_package.executors:SlurmExecutor"

so the core never imports them (and never needs to know they exist): an
executor is found by name when a job asks for it, and only then imported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

from .shards import CorpusJob, process_shard
from .sources import ShardSpec

if TYPE_CHECKING:
    from .run import ShardRecorder

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "poolkit.executors"


class CorpusExecutor:
    """Runs the pending shards of a corpus job. Subclass it, set :attr:`name`, implement :meth:`run`.

    :func:`~poolkit.corpus.embed_corpus` builds the executor with the job's
    placement options (``workers``, ``gpus_per_worker``, ``device``; each
    ``None`` when not given, so the executor picks its defaults) and calls
    :meth:`run` once per run of the job, with at least one pending shard.
    A subclass that takes more options accepts them as keywords in its own
    ``__init__`` and passes the three above on.
    """

    #: The name ``--engine`` selects it by (an entry point's name should match).
    name: ClassVar[str] = ""

    #: What the executor can embed: ``"text"``, and ``"image"`` when it handles image corpora
    #: (``--image-column``: :meth:`CorpusSource.read <poolkit.corpus.CorpusSource.read>` then gives
    #: :class:`~poolkit.inputs.ImagePrompt` rows instead of strings). An executor that embeds shards with
    #: :func:`~poolkit.corpus.process_shard`, or the job's tokenizer and embedder, handles both; it says so
    #: here, and image jobs are refused on executors that do not.
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, *, workers: int | None = None, gpus_per_worker: float | None = None,
                 device: str | None = None) -> None:
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.device = device

    def run(self, job: CorpusJob, pending: Sequence[ShardSpec], recorder: ShardRecorder) -> None:
        """Embed and write every shard of ``pending``; report each one to ``recorder`` as it finishes.

        The contract that keeps jobs resumable:

        - write each shard with ``job.write_shard`` (or :func:`~poolkit.corpus.process_shard`, which
          reads, embeds and writes it): atomically, idempotently, from wherever it was embedded;
          ``job`` is picklable, to send to other processes or machines;
        - in the coordinating process, call ``recorder(stats)`` for each finished shard as soon as it
          is written (``count_rows=False`` when ``recorder.progress`` was already advanced row by
          row), so an interruption loses only the shards in flight;
        - in a process that is not the coordinator (e.g. a DDP rank other than 0, re-running the
          same command), set ``recorder.read_only = True`` and record nothing;
        - let exceptions propagate: the shards recorded so far stay done, a rerun does the rest.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run(job, pending, recorder)")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, workers={self.workers!r}, "
                f"gpus_per_worker={self.gpus_per_worker!r}, device={self.device!r})")


class LocalExecutor(CorpusExecutor):
    """``local``: the shards one after another in this process, with one model on ``device``."""

    name = "local"
    modalities = ("text", "image")

    def run(self, job: CorpusJob, pending: Sequence[ShardSpec], recorder: ShardRecorder) -> None:
        if self.workers not in (None, 1) or self.gpus_per_worker is not None:
            logger.warning("The local executor runs one model in this process: workers/gpus_per_worker are ignored")
        embedder = job.make_embedder(**({"device": self.device} if self.device else {}))
        on_rows = recorder.progress.update if recorder.progress is not None else None
        for spec in pending:
            recorder(process_shard(job, spec, embedder, on_rows=on_rows), count_rows=False)


BUILTIN_EXECUTORS: dict[str, type[CorpusExecutor]] = {LocalExecutor.name: LocalExecutor}


def executor_entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed executors' entry points by name (the first of a repeated name wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return found


def available_executors() -> list[str]:
    """Names ``--engine`` accepts: the built-in ``local``, then the installed ones (sorted)."""
    plugins = sorted(name for name in executor_entry_points() if name not in BUILTIN_EXECUTORS)
    return [*BUILTIN_EXECUTORS, *plugins]


def load_executor(name: str) -> type[CorpusExecutor]:
    """The executor class registered as ``name`` (imported only now).

    ``ValueError`` for an unknown name (listing the installed ones), ``ImportError``
    when its package fails to import, ``TypeError`` when it is not a :class:`CorpusExecutor`.
    """
    if name in BUILTIN_EXECUTORS:
        return BUILTIN_EXECUTORS[name]
    entry = executor_entry_points().get(name)
    if entry is None:
        raise ValueError(f"Unknown executor {name!r}; installed: {', '.join(available_executors())} "
                         f"(packages add executors under the {ENTRY_POINT_GROUP!r} entry-point group)")
    try:
        cls = entry.load()
    except ImportError as exc:
        raise ImportError(f"Executor {name!r} ({entry.value}) failed to import: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, CorpusExecutor)):
        raise TypeError(f"Executor {name!r} ({entry.value}) is not a subclass of poolkit.corpus.CorpusExecutor")
    return cls


def make_executor(engine: str | CorpusExecutor, **options: Any) -> CorpusExecutor:
    """An executor by name, built with ``options`` (an instance is returned as it is)."""
    if isinstance(engine, CorpusExecutor):
        return engine
    executor = load_executor(engine)(**options)
    if not executor.name:
        executor.name = engine  # type: ignore[misc]
    return executor

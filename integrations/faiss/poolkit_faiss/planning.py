"""Index planning: pick a FAISS index family and an embedding dimension from the
corpus size and a memory budget.

The size model counts what a serialized index holds (``faiss.write_index``),
which is also what it occupies in RAM, give or take a few percent:

* the codes (``code_size`` bytes a vector, as faiss computes it),
* 8 bytes a vector for the int64 id (``IndexIDMap2.id_map`` or the ids in the
  IVF inverted lists),
* HNSW links: ``4 * (2M + M/(M-1))`` bytes (level 0 has 2M neighbours, a vector
  reaches level >= l with probability M^-l) plus its level (4) and offset (8),
* fixed costs: IVF centroids (``nlist * 4d``), list sizes (8 a list), trained
  quantizer parameters, and the half-filled last block of each fast-scan list.

It is checked against the serialized size of real indexes in
``tests/test_sizes.py`` (within 10% for every family on 20k vectors).

The rules follow the faiss guidelines
(https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index):
exhaustive layouts (``Flat``, or ``SQ8`` etc. in an ``IndexIDMap2``) up to
50k vectors; above that ``HNSW32,Flat`` while float32 vectors plus links fit,
then ``IVF,Flat``, then IVF with compressed codes; ``4*sqrt(n)`` lists below 1M
vectors, 65,536+ lists with an HNSW coarse quantizer above. Codes: float32,
the 8-bit scalar quantizer, RaBitQ (1, 2 or 4 bits a dimension; faiss >= 1.13)
and 4-bit fast-scan PQ.

The ladder, in the default ``prefer="truncate"`` order:

1. full precision (float32) at the model's full dimension;
2. full precision at each smaller Matryoshka dimension the model supports,
   largest first (the engine truncates, then re-normalizes);
3. the next codec by expected recall (SQ8, RaBitQ4, ...), again full
   dimension first, then the Matryoshka dimensions.

``prefer="quantize"`` tries every codec at one dimension before truncating.
A model without Matryoshka support is never truncated. Codecs whose expected
recall@10 is below ``min_recall`` are skipped; when nothing fits, the error
says the smallest budget that would, and with which plan.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

#: int64 id stored for each vector (IndexIDMap2.id_map, or the IVF list ids).
ID_BYTES = 8
#: Vectors per block in fast-scan inverted lists / codes.
FAST_SCAN_BLOCK = 32
#: Matryoshka ladder used when a model says ``is_matryoshka`` without a list.
DEFAULT_MATRYOSHKA_LADDER: tuple[int, ...] = (768, 512, 384, 256, 128, 64)
#: Corpora up to this size use exhaustive (non-IVF) layouts.
DEFAULT_FLAT_MAX_VECTORS = 50_000
#: Small fixed overhead of any serialized index (headers, HNSW level tables).
HEADER_BYTES = 512

Layout = Literal["flat", "hnsw", "ivf"]
Prefer = Literal["truncate", "quantize"]


# ---------------------------------------------------------------------------
# Codecs: how one vector is stored.
# ---------------------------------------------------------------------------


@functools.cache
def _factory_supported(spec: str) -> bool:
    """Whether this faiss build understands ``spec`` (e.g. RaBitQ needs faiss >= 1.13)."""
    try:
        import faiss

        faiss.index_factory(64, spec, faiss.METRIC_INNER_PRODUCT)
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class Codec:
    """One way to store a vector, with its size formula and expected recall.

    ``expected_recall`` is recall@10 of an exhaustive search over the codes
    against exact float32 search, measured on all-MiniLM-L6-v2 embeddings of
    the benchmark corpus (``benchmarks/faiss_recall_table.py``). It is
    indicative: it depends on the data.
    """

    name: str
    kind: Literal["fp32", "sq", "rabitq", "pqfs"]
    description: str
    expected_recall: float
    bits: int = 0  # sq / rabitq: bits a dimension
    dsub: int = 0  # pqfs: dimensions a 4-bit sub-quantizer covers

    def supports(self, d: int) -> bool:
        if self.kind == "pqfs":
            return d % self.dsub == 0 and d // self.dsub >= 1
        return d >= 1

    def pq_m(self, d: int) -> int:
        return d // self.dsub

    def factory(self, d: int) -> str:
        """The codec part of a faiss ``index_factory`` string."""
        if self.kind == "fp32":
            return "Flat"
        if self.kind == "sq":
            return f"SQ{self.bits}"
        if self.kind == "rabitq":
            return "RaBitQ" if self.bits == 1 else f"RaBitQ{self.bits}"
        return f"PQ{self.pq_m(d)}x4fs"

    def code_size(self, d: int) -> int:
        """Bytes of one vector's code (faiss ``code_size``; fast-scan: packed size)."""
        if self.kind == "fp32":
            return 4 * d
        if self.kind == "sq":
            return math.ceil(self.bits * d / 8)
        if self.kind == "rabitq":
            # sign bits + 2 float factors; extra bits + 3 float factors for multi-bit
            size = math.ceil(d / 8) + 8
            if self.bits > 1:
                size += math.ceil((self.bits - 1) * d / 8) + 12
            return size
        m = self.pq_m(d)
        return (m + m % 2) // 2  # 4 bits a sub-quantizer, M rounded up to even

    def trained_bytes(self, d: int) -> int:
        """Serialized trained parameters (SQ ranges, PQ codebooks, RaBitQ centre)."""
        if self.kind == "sq":
            return 2 * 4 * d
        if self.kind == "rabitq":
            return 4 * d
        if self.kind == "pqfs":
            return 16 * 4 * d  # 16 centroids of dsub floats for each of the M sub-quantizers
        return 0

    @property
    def needs_training(self) -> bool:
        return self.kind != "fp32"

    @property
    def fast_scan(self) -> bool:
        return self.kind == "pqfs"

    def available(self) -> bool:
        return _factory_supported(self.factory(64 * max(self.dsub, 1)))


#: Codecs in order of expected recall (best first). Expected recall@10 is measured
#: on all-MiniLM-L6-v2 (d=384) embeddings of the benchmark corpus with exhaustive
#: search over the codes, rounded down (benchmarks/faiss_recall_table.py). Scalar
#: quantizers below 8 bits and 2-bit-per-2-dims PQ were left out: RaBitQ gives the
#: same or better recall per byte, and they proved fragile on synthetic data.
CODECS: tuple[Codec, ...] = (
    Codec("fp32", "fp32", "float32 (full precision)", 1.00),
    Codec("sq8", "sq", "8-bit scalar quantizer", 0.99, bits=8),
    Codec("rabitq4", "rabitq", "RaBitQ, 4 bits a dimension", 0.94, bits=4),
    Codec("rabitq2", "rabitq", "RaBitQ, 2 bits a dimension", 0.84, bits=2),
    Codec("pqfs4", "pqfs", "fast-scan PQ, 4 bits per 4 dimensions", 0.70, dsub=4),
    Codec("rabitq", "rabitq", "RaBitQ, 1 bit a dimension", 0.68, bits=1),
    Codec("pqfs8", "pqfs", "fast-scan PQ, 4 bits per 8 dimensions", 0.54, dsub=8),
)
CODEC_BY_NAME: dict[str, Codec] = {c.name: c for c in CODECS}

#: Recall kept by the search parameters each layout gets (efSearch, nprobe).
LAYOUT_RECALL = {"flat": 1.0, "hnsw": 0.99, "ivf": 0.98}
LAYOUTS: tuple[str, ...] = ("flat", "hnsw", "ivf")


def hnsw_link_bytes(m: int) -> float:
    """Expected bytes of HNSW graph data a vector: links, level and offset."""
    expected_links = 2 * m + m / (m - 1)
    return 4 * expected_links + 4 + 8


def default_nlist(n_vectors: int) -> int:
    """IVF list count from the faiss guidelines, capped so k-means gets >= 39 points a list."""
    if n_vectors < 1_000_000:
        target = 4 * math.sqrt(max(n_vectors, 1))
        nlist = 2 ** round(math.log2(max(target, 1)))
    elif n_vectors < 10_000_000:
        nlist = 65_536
    elif n_vectors < 100_000_000:
        nlist = 262_144
    else:
        nlist = 1_048_576
    cap = max(n_vectors // 39, 1)
    while nlist > cap:
        nlist //= 2
    return max(nlist, 1)


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: ~4*sqrt(nlist) as a power of two, at least 32 (or all lists).

    That is half the lists at nlist=64, 1/16 at 4096 and 1/64 at 65536: recall
    of IVF search on text embeddings needs a larger probed fraction when lists
    are few. A heuristic; override per call with ``search(..., nprobe=)``.
    """
    target = 2 ** round(math.log2(4 * math.sqrt(max(nlist, 1))))
    return min(nlist, max(32, target))


def ivf_quantizer(nlist: int) -> str:
    """Coarse quantizer: flat below 65,536 lists, HNSW32 above (faiss guidelines)."""
    return f"IVF{nlist}_HNSW32" if nlist >= 65_536 else f"IVF{nlist}"


# ---------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class IndexPlan:
    """What to build: the faiss factory string, dimension, sizes and search parameters.

    ``total_bytes = ceil(n_vectors * bytes_per_vector + fixed_bytes)`` is the
    expected serialized (and in-memory) size of the index. ``search_params``
    carries what keeps recall@10 near ``expected_recall`` (``efSearch``,
    ``nprobe``, RaBitQ ``qb``); ``build_params`` what construction needs.
    """

    family: str  # "layout/codec", e.g. "ivf/sq8"
    layout: str
    codec: str
    factory: str
    dimension: int
    model_dimension: int
    n_vectors: int
    bytes_per_vector: float
    fixed_bytes: int
    total_bytes: int
    expected_recall: float
    memory_budget_bytes: int | None = None
    nlist: int | None = None
    train_size: int = 0
    search_params: dict[str, int] = field(default_factory=dict)
    build_params: dict[str, int] = field(default_factory=dict)
    matryoshka: bool = False
    model_name: str | None = None
    metric: str = "inner_product"
    normalize: bool = True
    reason: str = ""

    # -- derived ---------------------------------------------------------

    @property
    def truncated(self) -> bool:
        """True when vectors are cut to a Matryoshka dimension below the model's."""
        return self.dimension < self.model_dimension

    @property
    def supports_remove(self) -> bool:
        """Whether faiss can remove vectors (HNSW cannot: the store uses tombstones)."""
        return self.layout != "hnsw"

    @property
    def needs_training(self) -> bool:
        return self.train_size > 0

    @property
    def train_bytes(self) -> int:
        """Transient memory of the float32 training sample (not part of ``total_bytes``)."""
        return self.train_size * self.dimension * 4

    def fits(self, memory_budget_bytes: float | None = None) -> bool:
        budget = self.memory_budget_bytes if memory_budget_bytes is None else memory_budget_bytes
        return budget is None or self.total_bytes <= budget

    def size_for(self, n_vectors: int) -> int:
        """Expected serialized size of this family with ``n_vectors`` vectors."""
        return math.ceil(n_vectors * self.bytes_per_vector + self.fixed_bytes)

    def describe(self) -> str:
        """A few lines for humans: what, how big, why."""
        lines = [
            f"{self.factory}  ({self.family}, inner product on L2-normalized vectors)",
            f"  dimension {self.dimension}"
            + (f" (Matryoshka truncation of {self.model_dimension})" if self.truncated else "")
            + (f", model {self.model_name}" if self.model_name else ""),
            f"  {self.bytes_per_vector:,.1f} B/vector x {self.n_vectors:,} + {format_bytes(self.fixed_bytes)} fixed"
            f" = {format_bytes(self.total_bytes)}"
            + (
                f" of a {format_bytes(self.memory_budget_bytes)} budget"
                if self.memory_budget_bytes is not None
                else ""
            ),
            f"  expected recall@10 vs exact search ~ {self.expected_recall:.2f}"
            + (f"; search params {self.search_params}" if self.search_params else ""),
        ]
        if self.train_size:
            lines.append(
                f"  trains on a sample of {self.train_size:,} vectors ({format_bytes(self.train_bytes)} while training)"
            )
        if not self.supports_remove:
            lines.append("  deletes are tombstones (HNSW cannot remove); compact() rebuilds")
        if self.reason:
            lines.append(f"  why: {self.reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.search_params.items())
        return (
            f"IndexPlan({self.factory!r}, d={self.dimension}, {self.bytes_per_vector:,.1f} B/vector, "
            f"total={format_bytes(self.total_bytes)} for {self.n_vectors:,} vectors, "
            f"recall@10~{self.expected_recall:.2f}" + (f", {params}" if params else "") + ")"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPlan:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_n_vectors(self, n_vectors: int) -> IndexPlan:
        return dataclasses.replace(self, n_vectors=n_vectors, total_bytes=self.size_for(n_vectors))


class BudgetError(ValueError):
    """No index fits the budget.

    ``smallest``: the smallest plan meeting ``min_recall`` (its ``total_bytes``
    is the budget that would do). ``fallback``: the best plan that fits at a
    lower recall, else the smallest plan of any recall (or ``None``).
    """

    def __init__(self, message: str, smallest: IndexPlan | None, fallback: IndexPlan | None) -> None:
        super().__init__(message)
        self.smallest = smallest
        self.fallback = fallback


def _split_family(family: str) -> tuple[str, str]:
    aliases = {"flat": "flat/fp32", "hnsw": "hnsw/fp32", "ivf": "ivf/fp32"}
    family = aliases.get(family, family)
    if "/" not in family:
        raise ValueError(f"family {family!r}: expected 'layout/codec', e.g. 'ivf/sq8' or 'hnsw/fp32'")
    layout, codec = family.split("/", 1)
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if codec not in CODEC_BY_NAME:
        raise ValueError(f"Unknown codec {codec!r}; expected one of {', '.join(CODEC_BY_NAME)}")
    if layout == "hnsw" and codec != "fp32":
        raise ValueError("HNSW plans store float32 vectors (family 'hnsw/fp32')")
    return layout, codec


def plan_for(
    family: str,
    n_vectors: int,
    dimension: int,
    *,
    model_dimension: int | None = None,
    matryoshka: bool = False,
    model_name: str | None = None,
    memory_budget_bytes: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 40,
    train_size: int | None = None,
    reason: str = "",
) -> IndexPlan:
    """The plan (factory string, sizes, search parameters) for one named family.

    ``family`` is ``"layout/codec"``: layout ``flat`` (exhaustive, ids in an
    ``IndexIDMap2``), ``hnsw`` (``HNSW{M},Flat``) or ``ivf`` (ids in the
    inverted lists); codec one of :data:`CODECS` (``fp32``, ``sq8``,
    ``rabitq4``, ``rabitq2``, ``pqfs4``, ``rabitq``, ``pqfs8``). ``"flat"``,
    ``"hnsw"`` and ``"ivf"`` alone mean float32.
    """
    layout, codec_name = _split_family(family)
    codec = CODEC_BY_NAME[codec_name]
    if n_vectors < 0:
        raise ValueError("n_vectors must be >= 0")
    if not codec.supports(dimension):
        raise ValueError(f"{codec.name} needs a dimension divisible by {codec.dsub}; got {dimension}")
    model_dimension = model_dimension or dimension
    code = codec.code_size(dimension)
    search: dict[str, int] = {}
    build: dict[str, int] = {}
    fixed = HEADER_BYTES + codec.trained_bytes(dimension)
    n_lists: int | None = None
    if layout == "flat":
        factory = codec.factory(dimension)
        per_vector: float = code + ID_BYTES
        if codec.fast_scan:  # codes are padded to whole blocks of 32 vectors
            fixed += FAST_SCAN_BLOCK // 2 * code
    elif layout == "hnsw":
        factory = f"HNSW{hnsw_m},Flat"
        per_vector = code + ID_BYTES + hnsw_link_bytes(hnsw_m)
        search["efSearch"] = max(ef_search, 16)
        build["efConstruction"] = ef_construction
    else:
        n_lists = nlist or default_nlist(n_vectors)
        factory = f"{ivf_quantizer(n_lists)},{codec.factory(dimension)}"
        per_vector = code + ID_BYTES
        quantizer_per_list = 4 * dimension + (hnsw_link_bytes(32) if n_lists >= 65_536 else 0)
        fixed += math.ceil(n_lists * (quantizer_per_list + 8))  # centroids + list sizes
        if codec.fast_scan:  # half a block of padding and two vector headers a list
            fixed += n_lists * (FAST_SCAN_BLOCK // 2 * code + 16)
        search["nprobe"] = min(nprobe or default_nprobe(n_lists), n_lists)
    if codec.kind == "rabitq":
        search["qb"] = 8  # quantize queries to 8 bits (faiss default 4) for better ranking
    if train_size is None:
        if layout == "ivf":
            train_size = max(39 * (n_lists or 1), 10_000)
        elif codec.needs_training:
            train_size = 20_000
        else:
            train_size = 0
    train_size = min(train_size, n_vectors) if codec.needs_training or layout == "ivf" else 0
    expected = round(codec.expected_recall * LAYOUT_RECALL[layout], 3)
    return IndexPlan(
        family=f"{layout}/{codec.name}",
        layout=layout,
        codec=codec.name,
        factory=factory,
        dimension=dimension,
        model_dimension=model_dimension,
        n_vectors=n_vectors,
        bytes_per_vector=float(per_vector),
        fixed_bytes=int(fixed),
        total_bytes=math.ceil(n_vectors * per_vector + fixed),
        expected_recall=expected,
        memory_budget_bytes=None if memory_budget_bytes is None else int(memory_budget_bytes),
        nlist=n_lists,
        train_size=train_size,
        search_params=search,
        build_params=build,
        matryoshka=matryoshka,
        model_name=model_name,
        reason=reason,
    )


# ---------------------------------------------------------------------------
# Model information and the ladder.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the planner needs to know about the embedding model."""

    dimension: int
    is_matryoshka: bool
    matryoshka_dimensions: tuple[int, ...] | None
    name: str | None

    def ladder(self, max_dimension: int | None = None) -> list[int]:
        """Dimensions to try, largest first: the full one, then Matryoshka ones."""
        top = min(max_dimension or self.dimension, self.dimension)
        if not self.is_matryoshka:
            return [self.dimension]
        dims = self.matryoshka_dimensions or DEFAULT_MATRYOSHKA_LADDER
        smaller = sorted({d for d in dims if 0 < d < top}, reverse=True)
        return [top, *smaller]


def model_info(
    llm: Any = None,
    *,
    dimension: int | None = None,
    matryoshka_dimensions: Sequence[int] | None = None,
    is_matryoshka: bool | None = None,
    model_name: str | None = None,
) -> ModelInfo:
    """Resolve the model's dimension and Matryoshka support, from an ``LLM`` or from arguments.

    With ``llm`` (a ``poolkit.LLM`` or its ``model_config``), the engine's
    config is authoritative: ``is_matryoshka`` / ``matryoshka_dimensions`` come
    from config.json (or ``hf_overrides``). Passing a ``dimension`` smaller
    than the model's asks for truncation, which the engine validates (a
    non-Matryoshka model raises the engine's ``ValueError``).
    """
    if llm is not None:
        config = getattr(llm, "model_config", llm)
        if getattr(config, "task", "embed") != "embed":
            raise ValueError(
                f"plan_index needs an embedding model; {config.served_model_name!r} has task {config.task!r}"
            )
        full = int(config.embedding_dim)
        if dimension is not None and dimension != full:
            verify_dimension(config, dimension)
        dims = config.matryoshka_dimensions
        return ModelInfo(
            dimension=full,
            is_matryoshka=bool(config.is_matryoshka),
            matryoshka_dimensions=tuple(dims) if dims else None,
            name=model_name or config.served_model_name,
        )
    if dimension is None or dimension < 1:
        raise ValueError("plan_index needs dimension=<embedding size> (or llm=<poolkit.LLM>)")
    mrl = bool(is_matryoshka) or bool(matryoshka_dimensions)
    if is_matryoshka is False and matryoshka_dimensions:
        raise ValueError("matryoshka_dimensions given with is_matryoshka=False")
    return ModelInfo(
        dimension=int(dimension),
        is_matryoshka=mrl,
        matryoshka_dimensions=tuple(int(d) for d in matryoshka_dimensions) if matryoshka_dimensions else None,
        name=model_name,
    )


def verify_dimension(model_config: Any, dimension: int) -> None:
    """Raise the engine's own ``ValueError`` when the model cannot be cut to ``dimension``."""
    from poolkit import PoolingParams

    PoolingParams(dimensions=dimension).verify("embed", model_config)


def _matches(plan: IndexPlan, exclude: set[str]) -> bool:
    return bool({plan.family, plan.layout, plan.codec} & exclude)


def candidate_plans(
    n_vectors: int,
    info: ModelInfo,
    *,
    max_dimension: int | None = None,
    prefer: Prefer = "truncate",
    exclude: Iterable[str] = (),
    flat_max_vectors: int = DEFAULT_FLAT_MAX_VECTORS,
    hnsw_m: int = 32,
    nlist: int | None = None,
    memory_budget_bytes: int | None = None,
) -> list[IndexPlan]:
    """Every plan the ladder considers, in preference order (see the module docstring)."""
    if prefer not in ("truncate", "quantize"):
        raise ValueError("prefer must be 'truncate' or 'quantize'")
    excluded = set(exclude)
    codecs = [c for c in CODECS if c.available() and c.name not in excluded]
    dims = info.ladder(max_dimension)
    if prefer == "truncate":
        order = [(c, d) for c in codecs for d in dims]
    else:
        order = [(c, d) for d in dims for c in codecs]
    plans: list[IndexPlan] = []
    for codec, d in order:
        if not codec.supports(d):
            continue
        if n_vectors <= flat_max_vectors:
            layouts = ["flat"]
        elif codec.kind == "fp32":
            layouts = ["hnsw", "ivf"]
        else:
            layouts = ["ivf"]
        for layout in layouts:
            plan = plan_for(
                f"{layout}/{codec.name}",
                n_vectors,
                d,
                model_dimension=info.dimension,
                matryoshka=info.is_matryoshka,
                model_name=info.name,
                memory_budget_bytes=memory_budget_bytes,
                nlist=nlist,
                hnsw_m=hnsw_m,
            )
            if not _matches(plan, excluded):
                plans.append(plan)
    return plans


def _short(plan: IndexPlan) -> str:
    return f"{plan.factory!r} at d={plan.dimension} needs {format_bytes(plan.total_bytes)}"


def plan_index(
    n_vectors: int,
    memory_budget_bytes: float,
    *,
    dimension: int | None = None,
    matryoshka_dimensions: Sequence[int] | None = None,
    is_matryoshka: bool | None = None,
    llm: Any = None,
    model_name: str | None = None,
    min_recall: float = 0.95,
    prefer: Prefer = "truncate",
    exclude: Iterable[str] = (),
    flat_max_vectors: int = DEFAULT_FLAT_MAX_VECTORS,
    hnsw_m: int = 32,
    nlist: int | None = None,
) -> IndexPlan:
    """Pick the index family and dimension for ``n_vectors`` within ``memory_budget_bytes``.

    Args:
        n_vectors: corpus size (vectors the index will hold).
        memory_budget_bytes: bytes the index may take (serialized ~ in RAM).
        dimension: the model's embedding size. With ``llm``, a smaller value
            caps the Matryoshka ladder (refused with the engine's error for a
            model without Matryoshka support).
        matryoshka_dimensions: the dimensions the model was trained for;
            giving them means the model supports Matryoshka truncation.
        is_matryoshka: Matryoshka support without a list: tries 768, 512,
            384, 256, 128, 64 below ``dimension``. Default: no support, so
            the plan never truncates.
        llm: a ``poolkit.LLM`` (or its ``model_config``): dimension and
            Matryoshka support come from the engine's config.
        model_name: for messages and the saved manifest.
        min_recall: skip codecs whose expected recall@10 is lower.
        prefer: ``"truncate"`` (Matryoshka dimensions before heavier
            codecs, the default) or ``"quantize"``.
        exclude: families, layouts or codecs to leave out, e.g. ``{"hnsw"}``
            when cheap deletes matter more than query speed.
        flat_max_vectors: corpora up to this size use exhaustive layouts.
        hnsw_m: HNSW links per node.
        nlist: IVF lists (default ``4*sqrt(n)``, the faiss guideline).

    Returns:
        The first plan on the ladder that fits, with a ``reason``.

    Raises:
        BudgetError (a ``ValueError``): nothing fits; the message names the
        smallest plan meeting ``min_recall`` (so the budget that would do)
        and the best plan that fits at a lower recall, if any.
    """
    if n_vectors < 1:
        raise ValueError("n_vectors must be >= 1")
    if memory_budget_bytes <= 0:
        raise ValueError("memory_budget_bytes must be > 0")
    info = model_info(
        llm,
        dimension=dimension,
        matryoshka_dimensions=matryoshka_dimensions,
        is_matryoshka=is_matryoshka,
        model_name=model_name,
    )
    budget = int(memory_budget_bytes)
    plans = candidate_plans(
        n_vectors,
        info,
        max_dimension=dimension if llm is not None else None,
        prefer=prefer,
        exclude=exclude,
        flat_max_vectors=flat_max_vectors,
        hnsw_m=hnsw_m,
        nlist=nlist,
        memory_budget_bytes=budget,
    )
    no_truncation = ""
    if not info.is_matryoshka:
        name = f"model {info.name!r}" if info.name else "the model"
        no_truncation = f"; {name} has no Matryoshka support, so it is never truncated"
    rejected: list[IndexPlan] = []
    for plan in plans:
        if plan.expected_recall < min_recall:
            continue
        if plan.fits(budget):
            return dataclasses.replace(plan, reason=_reason(plan, rejected, budget, info) + no_truncation)
        rejected.append(plan)
    raise _budget_error(plans, n_vectors, info, budget, min_recall, no_truncation)


def _floor2(x: float) -> float:
    return math.floor(x * 100) / 100


def _budget_error(
    plans: list[IndexPlan], n_vectors: int, info: ModelInfo, budget: int, min_recall: float, suffix: str
) -> BudgetError:
    eligible = [p for p in plans if p.expected_recall >= min_recall]
    smallest = min(eligible, key=lambda p: p.total_bytes) if eligible else None
    smallest_any = min(plans, key=lambda p: p.total_bytes) if plans else None
    best_lower = next((p for p in plans if p.fits(budget)), None)  # ladder order: best recall first
    parts = [f"No index for {n_vectors:,} vectors (d={info.dimension}) fits {format_bytes(budget)}"]
    if smallest is not None:
        parts.append(
            f"the smallest with expected recall@10 >= {min_recall:g} is {_short(smallest)} "
            f"({smallest.bytes_per_vector:,.0f} B/vector): raise memory_budget_bytes to >= {smallest.total_bytes:,}"
        )
    if best_lower is not None:
        parts.append(
            f"with lower recall, {best_lower.factory!r} at d={best_lower.dimension} fits "
            f"({format_bytes(best_lower.total_bytes)}, expected recall@10 ~ {best_lower.expected_recall:.2f}): "
            f"pass min_recall={_floor2(best_lower.expected_recall):g} to accept it"
        )
    elif smallest_any is not None and smallest_any is not smallest:
        parts.append(
            f"the smallest index of any recall, {_short(smallest_any)} "
            f"(expected recall@10 ~ {smallest_any.expected_recall:.2f}), does not fit either"
        )
    return BudgetError("; ".join(parts) + suffix, smallest, best_lower or smallest_any)


def _reason(plan: IndexPlan, rejected: list[IndexPlan], budget: int, info: ModelInfo) -> str:
    head = (
        f"{plan.family} at d={plan.dimension} takes {format_bytes(plan.total_bytes)} of {format_bytes(budget)}"
    )
    if not rejected:
        kind = "exact search, small corpus" if plan.layout == "flat" else "full precision fits"
        return f"{head} ({kind})"
    shown = ", ".join(_short(p) for p in rejected[:3])
    more = f" and {len(rejected) - 3} more" if len(rejected) > 3 else ""
    why = f"{head}; larger plans do not fit: {shown}{more}"
    if plan.truncated:
        why += f"; Matryoshka truncation {info.dimension} -> {plan.dimension} preferred to heavier compression"
    return why

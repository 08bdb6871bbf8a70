"""plan_index: size model, the ladder (full precision -> Matryoshka -> compression), errors."""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import pytest

from poolkit_faiss import CODECS, BudgetError, IndexPlan, plan_for, plan_index
from poolkit_faiss.planning import DEFAULT_MATRYOSHKA_LADDER, default_nlist, default_nprobe, hnsw_link_bytes

pytestmark = pytest.mark.unit

MIB = 2**20
GIB = 2**30


def fake_config(*, dim: int = 384, matryoshka: bool = False, dims: list[int] | None = None, name: str = "m"):
    """The fields of poolkit's ModelConfig that plan_index and PoolingParams.verify read."""
    return SimpleNamespace(
        task="embed",
        embedding_dim=dim,
        is_matryoshka=matryoshka or bool(dims),
        matryoshka_dimensions=dims,
        served_model_name=name,
        outputs=("dense",),
        default_output="dense",
    )


@pytest.mark.parametrize("d", [64, 128, 384, 768])
def test_code_sizes_match_faiss(d: int) -> None:
    for codec in CODECS:
        if not codec.available() or not codec.supports(d):
            continue
        index = faiss.index_factory(d, codec.factory(d), faiss.METRIC_INNER_PRODUCT)
        assert codec.code_size(d) == index.code_size, codec.name


def test_bytes_per_vector_at_384_match_the_measured_table() -> None:
    """Issue table for d=384: Flat 1536, HNSW32 ~1808, SQ8 384, RaBitQ ~56 (+8 B of id each)."""
    n = 1_000_000
    assert plan_for("flat/fp32", n, 384).bytes_per_vector == 1536 + 8
    hnsw = plan_for("hnsw/fp32", n, 384, hnsw_m=32).bytes_per_vector
    assert hnsw == pytest.approx(1536 + 8 + hnsw_link_bytes(32))
    assert 1808 <= hnsw - 8 <= 1812
    assert plan_for("ivf/sq8", n, 384).bytes_per_vector == 384 + 8
    assert plan_for("ivf/rabitq", n, 384).bytes_per_vector == 56 + 8
    assert plan_for("ivf/pqfs8", n, 384).bytes_per_vector == 24 + 8  # PQ48x4fs
    assert plan_for("ivf/pqfs8", n, 384).factory.endswith("PQ48x4fs")


def test_ivf_lists_and_probes_follow_the_guidelines() -> None:
    assert default_nlist(1_000) == 16  # 4*sqrt(1000) ~ 126, capped at n/39
    assert default_nlist(100_000) == 1024  # 4*sqrt(1e5) ~ 1265 -> 1024
    assert default_nlist(5_000_000) == 65_536
    assert default_nprobe(64) == 32 and default_nprobe(16) == 16
    assert default_nprobe(4096) == 256
    plan = plan_for("ivf/sq8", 5_000_000, 384)
    assert plan.factory == "IVF65536_HNSW32,SQ8"
    assert plan.search_params["nprobe"] == default_nprobe(65_536)


@pytest.mark.parametrize("n", [1_000, 30_000, 200_000, 3_000_000])
@pytest.mark.parametrize("per_vector", [40, 80, 300, 500, 1600, 2000])
@pytest.mark.parametrize("mrl", [None, [64, 128, 256]])
def test_plans_fit_the_budget(n: int, per_vector: int, mrl: list[int] | None) -> None:
    budget = n * per_vector
    try:
        plan = plan_index(n, budget, dimension=384, matryoshka_dimensions=mrl)
    except BudgetError as err:
        assert err.smallest is not None and err.smallest.total_bytes > budget  # noqa: PT017 - either outcome is checked
        return
    assert plan.total_bytes <= budget
    assert plan.expected_recall >= 0.95
    assert plan.n_vectors == n and plan.memory_budget_bytes == budget
    if mrl is None:
        assert plan.dimension == 384 and not plan.truncated
    else:
        assert plan.dimension in (384, *mrl)


def test_full_precision_while_it_fits() -> None:
    plan = plan_index(10_000, 100 * MIB, dimension=384, is_matryoshka=True)
    assert (plan.family, plan.dimension) == ("flat/fp32", 384)
    plan = plan_index(1_000_000, 4 * GIB, dimension=384, is_matryoshka=True)
    assert (plan.family, plan.dimension) == ("hnsw/fp32", 384)
    assert plan.search_params["efSearch"] >= 64
    assert "full precision" in plan.reason


def test_matryoshka_dimension_before_heavier_compression() -> None:
    n = 1_000_000
    budget = plan_for("hnsw/fp32", n, 256).total_bytes + 1  # float32 fits at 256, not at 384
    plan = plan_index(n, budget, dimension=384, matryoshka_dimensions=[64, 128, 256])
    assert (plan.family, plan.dimension, plan.model_dimension) == ("hnsw/fp32", 256, 384)
    assert plan.truncated and plan.matryoshka
    assert "Matryoshka truncation 384 -> 256" in plan.reason
    # Without a list, is_matryoshka uses the default ladder below the model dimension.
    plan = plan_index(n, budget, dimension=384, is_matryoshka=True)
    assert plan.dimension == 256 and 256 in DEFAULT_MATRYOSHKA_LADDER
    # prefer="quantize" keeps the full dimension and compresses instead.
    plan = plan_index(n, budget, dimension=384, matryoshka_dimensions=[64, 128, 256], prefer="quantize")
    assert (plan.codec, plan.dimension) == ("sq8", 384)


def test_compression_after_the_smallest_matryoshka_dimension() -> None:
    n = 1_000_000
    budget = plan_for("ivf/fp32", n, 64).total_bytes - 1  # no float32 plan fits, even at d=64
    plan = plan_index(n, budget, dimension=384, matryoshka_dimensions=[64, 128, 256])
    fitting = [d for d in (384, 256, 128, 64) if plan_for("ivf/sq8", n, d).total_bytes <= budget]
    assert (plan.family, plan.dimension) == ("ivf/sq8", fitting[0])
    # Without Matryoshka support the same budget is an error (SQ8 at 384 does not fit).
    with pytest.raises(BudgetError):
        plan_index(n, budget, dimension=384)


def test_never_truncates_a_model_without_matryoshka() -> None:
    n = 1_000_000
    budget = plan_for("hnsw/fp32", n, 256).total_bytes + 1
    plan = plan_index(n, budget, dimension=384)
    assert plan.dimension == 384 and plan.codec == "sq8"
    assert "no Matryoshka support" in plan.reason
    with pytest.raises(BudgetError, match="never truncated"):
        plan_index(n, 50 * n, dimension=384, model_name="sentence-transformers/all-MiniLM-L6-v2")


def test_budget_error_says_what_would_fit() -> None:
    n = 1_000_000
    with pytest.raises(BudgetError) as info:
        plan_index(n, 100 * MIB, dimension=384)
    err = info.value
    message = str(err)
    assert err.smallest is not None and err.smallest.codec == "sq8"
    assert f"{err.smallest.total_bytes:,}" in message and err.smallest.factory in message
    assert err.fallback is not None and err.fallback.fits(100 * MIB)
    assert "min_recall=" in message
    # The budget the error names is enough.
    assert plan_index(n, err.smallest.total_bytes, dimension=384).factory == err.smallest.factory
    # So is the lower-recall plan it proposes, with the min_recall it proposes.
    lowered = float(message.split("pass min_recall=")[1].split(" ")[0])
    assert plan_index(n, 100 * MIB, dimension=384, min_recall=lowered).factory == err.fallback.factory
    # Nothing at all fits: still a clear error.
    with pytest.raises(BudgetError, match="does not fit either"):
        plan_index(n, 1 * MIB, dimension=384)


def test_exclude_hnsw_for_cheap_deletes() -> None:
    plan = plan_index(1_000_000, 4 * GIB, dimension=384, exclude={"hnsw"})
    assert plan.family == "ivf/fp32" and plan.supports_remove


def test_plan_from_an_engine_config() -> None:
    config = fake_config(dim=384, dims=[128, 256], name="mrl-model")
    budget = plan_for("hnsw/fp32", 1_000_000, 256).total_bytes + 1
    plan = plan_index(1_000_000, budget, llm=SimpleNamespace(model_config=config))
    assert plan.dimension == 256 and plan.model_name == "mrl-model"
    # A dimension cap goes through the engine's own validation.
    assert plan_index(1_000, 10 * MIB, llm=config, dimension=128).dimension == 128
    with pytest.raises(ValueError, match="only supports"):
        plan_index(1_000, 10 * MIB, llm=config, dimension=100)


def test_refuses_to_truncate_a_non_matryoshka_model_with_the_engine_message() -> None:
    config = fake_config(dim=384, name="sentence-transformers/all-MiniLM-L6-v2")
    expected = (
        'Model "sentence-transformers/all-MiniLM-L6-v2" does not support matryoshka representation, '
        "changing output dimensions will lead to poor results."
    )
    with pytest.raises(ValueError) as info:
        plan_index(1_000, 10 * MIB, llm=config, dimension=128)
    assert str(info.value) == expected


def test_plan_round_trips_and_describes_itself() -> None:
    plan = plan_index(200_000, 200 * MIB, dimension=384)
    assert IndexPlan.from_dict(plan.to_dict()) == plan
    text = plan.describe()
    assert plan.factory in text and "B/vector" in text and "why:" in text
    assert plan.factory in repr(plan)
    assert plan.with_n_vectors(400_000).total_bytes == plan.size_for(400_000) > plan.total_bytes


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dimension"):
        plan_index(10, 10 * MIB)
    with pytest.raises(ValueError):
        plan_index(0, 10 * MIB, dimension=8)
    with pytest.raises(ValueError, match="layout/codec"):
        plan_for("sq8", 10, 8)
    with pytest.raises(ValueError, match="divisible"):
        plan_for("ivf/pqfs8", 10, 100)

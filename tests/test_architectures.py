"""The supported-architectures matrix (``tests/architecture_matrix.py``): every row against its reference.

Per row, one tiny checkpoint and one reference (transformers / sentence-transformers, one unpadded
sequence at a time, fp32), then:

- fp32: embeddings cosine >= 0.9999 per vector (and the same norm), probabilities/scores within 1e-4;
  the resolved task and whether batches are packed are the row's;
- bf16 against the fp32 reference: cosine >= 0.99, probabilities within 0.05 (the figure is recorded);
- ``cpu_prepack=False`` (plain ``nn.Linear``) matches too;
- one batch of mixed lengths equals the texts run one by one.

``POOLKIT_MATRIX_REPORT=path``: one JSON line per row with the fp32 and bf16 figures is appended to ``path``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poolkit import LLM

pytestmark = pytest.mark.unit


def _load_matrix() -> Any:
    """``tests/architecture_matrix.py`` (tests are imported by path: ``--import-mode=importlib``)."""
    if "architecture_matrix" in sys.modules:
        return sys.modules["architecture_matrix"]
    spec = importlib.util.spec_from_file_location("architecture_matrix", Path(__file__).with_name("architecture_matrix.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["architecture_matrix"] = module
    spec.loader.exec_module(module)
    return module


matrix = _load_matrix()
ROWS = matrix.ROWS
TEXTS = matrix.TEXTS


@dataclass
class Case:
    row: Any
    path: Path
    reference: np.ndarray
    llms: dict[str, LLM] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def llm(self, dtype: str = "float32", cpu_prepack: bool = True) -> LLM:
        key = f"{dtype}-prepack" if cpu_prepack else f"{dtype}-plain"
        if key not in self.llms:
            self.llms[key] = LLM(str(self.path), dtype=dtype, cpu_prepack=cpu_prepack,
                                 trust_remote_code=self.row.remote_code, **self.row.engine_kwargs)
        return self.llms[key]

    def outputs(self, llm: LLM, texts: list[str] | None = None) -> np.ndarray:
        return matrix.engine_outputs(llm, self.row.task, TEXTS if texts is None else texts)


@pytest.fixture(scope="module", params=ROWS, ids=[row.id for row in ROWS])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    row = request.param
    path = tmp_path_factory.mktemp(row.id.replace("-", "_"))
    row.build(path)
    built = Case(row, path, row.reference(path, TEXTS))
    yield built
    report = os.environ.get("POOLKIT_MATRIX_REPORT")
    if report and built.figures:
        with open(report, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": row.id, "architecture": row.architecture, "task": row.task,
                                 "packing": row.packing, **built.figures}) + "\n")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _compare(task: str, ours: np.ndarray, expected: np.ndarray) -> float:
    """Min cosine for embeddings, max abs difference otherwise."""
    assert ours.shape == expected.shape
    if task == "embed":
        return float(_cosines(ours, expected).min())
    return float(np.abs(ours - expected).max())


def _check(case: Case, ours: np.ndarray, cosine: float, abs_diff: float, what: str) -> float:
    figure = _compare(case.row.task, ours, case.reference)
    if case.row.task == "embed":
        assert figure >= cosine, f"{case.row.id} {what}: min cosine {figure:.6f} < {cosine}"
    else:
        assert figure <= abs_diff, f"{case.row.id} {what}: max abs diff {figure:.2e} > {abs_diff}"
    return figure


def test_fp32_matches_reference(case: Case) -> None:
    llm = case.llm()
    assert llm.model_config.task == case.row.task
    assert llm.engine.runner.packing == case.row.packing
    ours = case.outputs(llm)
    case.figures["fp32"] = _check(case, ours, cosine=0.9999, abs_diff=1e-4, what="fp32")
    if case.row.task == "embed":  # normalization (or its absence) is the reference's too
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(case.reference, axis=1), rtol=1e-3)


def test_bf16_close_to_fp32_reference(case: Case) -> None:
    llm = case.llm("bfloat16")
    assert llm.engine.runner.packing == case.row.packing
    case.figures["bf16"] = _check(case, case.outputs(llm), cosine=0.99, abs_diff=0.05, what="bf16")


def test_without_cpu_prepack(case: Case) -> None:
    llm = case.llm(cpu_prepack=False)
    assert llm.engine.runner.prepacked_linears == 0
    case.figures["fp32_no_prepack"] = _check(case, case.outputs(llm), cosine=0.9999, abs_diff=1e-4,
                                             what="cpu_prepack=False")


# Run alone: the shortest text, the two of equal length and the longest (each call costs a forward pass).
SINGLES = [1, 3, 4, 5]


def test_batched_equals_single_with_mixed_lengths(case: Case) -> None:
    llm = case.llm()
    lengths = [len(llm.get_tokenizer()(t)["input_ids"]) for t in TEXTS]
    assert max(lengths) >= 50 and min(lengths) <= 5 and lengths[3] == lengths[4]  # really mixed lengths
    assert lengths.index(max(lengths)) == 5 and lengths.index(min(lengths)) == 1
    if case.row.task == "score":  # the pairs (TEXTS[0], TEXTS[i])
        batched = case.outputs(llm)[[i - 1 for i in SINGLES]]
        singles = np.concatenate([case.outputs(llm, [TEXTS[0], TEXTS[i]]) for i in SINGLES])
    elif case.row.task == "reward":  # per-token rows, concatenated
        batched = case.outputs(llm, [TEXTS[i] for i in SINGLES])
        singles = np.concatenate([case.outputs(llm, [TEXTS[i]]) for i in SINGLES])
    else:
        batched = case.outputs(llm)[SINGLES]
        singles = np.concatenate([case.outputs(llm, [TEXTS[i]]) for i in SINGLES])
    figure = _compare(case.row.task, batched, singles)
    if case.row.task == "embed":
        assert figure >= 0.99999, f"{case.row.id}: batched vs single min cosine {figure:.7f}"
    else:
        assert figure <= 1e-5, f"{case.row.id}: batched vs single max abs diff {figure:.2e}"


def test_truncation_to_the_model_limit(case: Case) -> None:
    """``truncate_prompt_tokens=-1`` cuts to exactly ``max_model_len`` and runs: the limit accounts for every
    position the model can take (RoBERTa-style offsets, remote code included)."""
    llm = case.llm()
    long_text = " ".join([matrix.LONG_TEXT] * 40)
    limit = llm.model_config.max_model_len
    if case.row.task == "score":
        out = llm.score(TEXTS[0], long_text, truncate_prompt_tokens=-1, use_tqdm=False)[0]
    else:
        method = {"embed": llm.embed, "classify": llm.classify, "reward": llm.reward}[case.row.task]
        out = method(long_text, truncate_prompt_tokens=-1, use_tqdm=False)[0]
    assert len(out.prompt_token_ids) == limit < out.num_input_tokens


def test_readme_table_is_current() -> None:
    section = matrix.readme_section(matrix.README.read_text(encoding="utf-8"))
    assert section == matrix.render_table(ROWS), "run: python tests/architecture_matrix.py --write-readme"

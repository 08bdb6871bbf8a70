"""Generate notebooks/02_rag_faiss_langchain.ipynb (outputs stripped; nbmake executes it)."""

from pathlib import Path

import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
md("""# RAG retrieval with poolkit, FAISS and LangChain

A retrieval pipeline end to end, on CPU, in about a minute:

1. **chunk** a document collection with a token-aware splitter,
2. **plan** a FAISS index for a memory budget (`poolkit_faiss.plan_index`),
3. **embed and index** the chunks (`PoolkitEmbeddings` + `PoolkitFAISS`),
4. **retrieve** with a LangChain retriever and **rerank** the candidates (`PoolkitReranker`),
5. look at the trade-offs: **memory vs recall vs dimension** of the index, and **throughput vs the engine's token budget**.

The model is the bundled **all-MiniLM-L6-v2** (384-d, 256-token limit, no hub needed). The documents are
`shared/data/bench_corpus.jsonl`: real Python package summaries (one line) and README paragraphs (long)."""),
code("""import json
import logging
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

from poolkit import LLM

logging.basicConfig(level=logging.WARNING)


def find_corpus(name: str = "bench_corpus.jsonl") -> Path:
    \"\"\"<repo>/../shared/data/<name>, wherever the notebook runs from inside the repository.\"\"\"
    start = Path.cwd().resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "src" / "poolkit").is_dir():
            path = folder.parent / "shared" / "data" / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (the benchmark corpus sits next to the repository)")
            return path
    raise FileNotFoundError(f"no poolkit repository above {start}")


records = [json.loads(line) for line in find_corpus().open(encoding="utf-8")]
print(f"{len(records):,} texts; e.g. {records[1]['text']!r}")"""),
md("""## 1. Chunk the documents

The model reads at most 256 tokens, so long passages must be split before embedding (poolkit never truncates
silently: an over-long input is an error unless you ask for truncation). Splitting on the **model's own tokenizer**
keeps every chunk under the limit; a small overlap keeps sentences that straddle a boundary findable.
To stay quick we index 200 README paragraphs (chunked) and 1,200 one-line summaries (one chunk each)."""),
code("""llm = LLM()   # all-MiniLM-L6-v2; one engine, shared by the embeddings, the reranker and the planner below
splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(llm.tokenizer, chunk_size=128, chunk_overlap=16)

paragraphs = [r for r in records if len(r["text"]) >= 300][:200]
summaries = [r for r in records if len(r["text"]) < 300][:1200]
chunks = []
for r in paragraphs:
    for i, piece in enumerate(splitter.split_text(r["text"])):
        chunks.append(Document(piece, id=f"{r['id']}-{i}", metadata={"source": r["id"], "kind": "paragraph", "chunk": i}))
for r in summaries:
    chunks.append(Document(r["text"], id=f"{r['id']}-0", metadata={"source": r["id"], "kind": "summary", "chunk": 0}))
seen = set()   # drop exact duplicates (changelogs repeat): they waste index space and crowd the results
chunks = [d for d in chunks if not (d.page_content in seen or seen.add(d.page_content))]
texts = [d.page_content for d in chunks]

n_tokens = np.array([len(ids) for ids in llm.tokenizer(texts)["input_ids"]])
print(f"{len(paragraphs)} paragraphs -> {sum(d.metadata['kind'] == 'paragraph' for d in chunks):,} chunks, "
      f"+ {sum(d.metadata['kind'] == 'summary' for d in chunks):,} summaries = {len(chunks):,} unique chunks")
print(f"tokens per chunk: mean {n_tokens.mean():.0f}, max {n_tokens.max()} (model limit {llm.model_config.max_model_len})")
assert n_tokens.max() <= llm.model_config.max_model_len"""),
md("""## 2. Plan the index for a memory budget

`plan_index` walks a ladder from exact float32 search down through smaller Matryoshka dimensions (only for models
trained for them) and compressed codes (8-bit scalar quantization, RaBitQ, fast-scan PQ), and returns the first plan
that fits, with its predicted size (checked against `faiss.write_index` in the tests) and why it was chosen.
Say this corpus must fit in **1 MiB**: float32 vectors would take 2.4 MiB, and all-MiniLM-L6-v2 is not
Matryoshka-trained, so the planner quantizes instead of truncating."""),
code("""from poolkit_faiss import format_bytes, plan_index

plan = plan_index(len(chunks), 1 << 20, llm=llm)
print(plan.describe())"""),
md("The same call sizes a production corpus: 5 million vectors in 4 GiB move to an IVF index with an HNSW coarse quantizer."),
code("""print(plan_index(5_000_000, 4 * 2**30, llm=llm).describe())"""),
md("""## 3. Embed and index

`PoolkitFAISS.from_documents(chunks, embeddings, memory_budget_bytes=1 << 20)` plans, embeds and builds in one call.
Here we embed explicitly because the float vectors are reused in section 5, then add them to a store built on the plan
(the 8-bit quantizer trains on the first bulk load)."""),
code("""from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS

embeddings = PoolkitEmbeddings(llm=llm)
start = time.perf_counter()
vectors = np.asarray(embeddings.embed_documents(texts), dtype=np.float32)
seconds = time.perf_counter() - start
print(f"embedded {len(texts):,} chunks ({n_tokens.sum():,} tokens) in {seconds:.1f} s: "
      f"{len(texts) / seconds:,.0f} chunks/s, {n_tokens.sum() / seconds:,.0f} tokens/s")

store = PoolkitFAISS(embeddings, plan=plan)
store.add_embeddings(zip(texts, vectors.tolist()), metadatas=[d.metadata for d in chunks], ids=[d.id for d in chunks])
print(store)
print(f"index: {format_bytes(store.index.serialized_size())} (planned {format_bytes(plan.total_bytes)})")"""),
md("""## 4. Retrieve, then rerank

A retriever over the compressed index returns 20 candidates per question; `PoolkitReranker` rescores them and keeps
the best 3 (`ContextualCompressionRetriever`). Here the reranker is the same embedding model scoring by **exact**
float32 cosine, which repairs the small ordering errors of the 8-bit index. A random tiny cross-encoder
(`poolkit.testing.build_tiny_checkpoint(path, "cross-encoder")`) would give meaningless scores; on a networked machine
put a real cross-encoder there, e.g. `PoolkitReranker(model="BAAI/bge-reranker-base", top_n=3)`, which reads query and
passage together and is usually a clear precision gain over cosine."""),
code("""from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_poolkit import PoolkitReranker

retriever = store.as_retriever(search_kwargs={"k": 20})
reranker = PoolkitReranker(llm=llm, top_n=3)
rag = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=retriever)

questions = [
    "How do I limit the number of threads used by BLAS libraries?",
    "fast JSON serialization library for Python",
    "trace Python applications with AWS X-Ray",
    "HTTP/1.1 protocol library without I/O",
]
for question in questions:
    print(f"\\n## {question}")
    for doc in rag.invoke(question):
        m = doc.metadata
        print(f"  {m['relevance_score']:.3f}  [{m['kind']} {m['source']}#{m['chunk']}] {doc.page_content[:110]!r}")"""),
md("""Scores from the index (SQ8 codes) against the reranker's exact cosine for the same candidates, and a metadata
filter (`filter=` takes a dict of values, a list meaning "any of", or a callable):"""),
code("""question = questions[3]
hits = store.similarity_search_with_score(question, k=5)
exact = reranker.score(question, [doc.page_content for doc, _ in hits])
for (doc, approx), score in zip(hits, exact):
    print(f"index {approx:.4f}  exact {score:.4f}  {doc.page_content[:80]!r}")

print()
for doc in store.similarity_search(question, k=2, filter={"kind": "paragraph"}):
    print(doc.id, repr(doc.page_content[:100]))"""),
md("""## 5. Memory vs recall vs dimension

Every (codec, dimension) the planner can choose, built on the same vectors and searched with 300 held-out
summaries as queries; recall@10 is measured against exact float32 search at 384 dimensions.

**Caveat: all-MiniLM-L6-v2 is NOT Matryoshka-trained.** `hf_overrides={"is_matryoshka": True}` only declares
support so that the planner and the engine allow truncation; it does not make truncated vectors good. It is used
here to show the mechanics and the shape of the trade-off. A Matryoshka-trained model (nomic-embed-text-v1.5,
mxbai-embed-large-v1, ...) keeps far more recall when truncated, which is why the planner prefers truncation to heavy
compression for such models; for this one, quantization at full dimension is clearly the better deal."""),
code("""import faiss
from poolkit import PoolingParams
from poolkit_faiss import VectorIndex, candidate_plans, embed_texts, model_info, prepare_vectors, recall_at_k

faiss.omp_set_num_threads(1)   # on a small shared machine OpenMP spin-waits: PQ training is ~10x faster on one thread

mrl = LLM(hf_overrides={"is_matryoshka": True})   # same weights, Matryoshka declared (for the demo only)
info = model_info(mrl)
print(info, "-> ladder", info.ladder())

# The engine's truncation (dimensions=128) equals truncating the full vector and re-normalizing:
(short,) = mrl.embed(texts[0], pooling_params=PoolingParams(dimensions=128), use_tqdm=False)
print("engine vs manual truncation, max |diff|:",
      float(np.abs(np.array(short.outputs.embedding) - prepare_vectors(vectors[:1], 128, matryoshka=True)[0]).max()))

held_out = [r["text"] for r in records[-600:] if len(r["text"]) < 300][:300]   # not in the index
queries = embed_texts(llm, held_out)
truth = np.argsort(-queries @ vectors.T, axis=1)[:, :10]   # exact top-10 by brute force

results = []
for p in candidate_plans(len(vectors), info):
    index = VectorIndex.from_vectors(vectors, list(range(len(vectors))), plan=p, show_progress=False)
    results.append({"codec": p.codec, "factory": p.factory, "dim": p.dimension, "bytes": index.serialized_size(),
                    "recall": recall_at_k(index.search(queries, k=10).ids, truth)})
for r in (r for r in results if r["dim"] == info.dimension):
    print(f"{r['factory']:>9} d={r['dim']:<4} {format_bytes(r['bytes']):>11}  recall@10 {r['recall']:.3f}")"""),
code("""codecs = list(dict.fromkeys(r["codec"] for r in results))
colors = dict(zip(codecs, plt.cm.tab10.colors))
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
for c in codecs:
    rows = [r for r in results if r["codec"] == c]
    left.plot([r["dim"] for r in rows], [r["recall"] for r in rows], "o-", color=colors[c], label=c)
    right.scatter([r["bytes"] / 2**10 for r in rows], [r["recall"] for r in rows], color=colors[c], label=c)
    for r in rows:
        right.annotate(str(r["dim"]), (r["bytes"] / 2**10, r["recall"]), fontsize=7, xytext=(3, 2),
                       textcoords="offset points")
left.set(xlabel="dimension (Matryoshka truncation of 384)", ylabel="recall@10 vs exact float32 search",
         title="Truncating a model that is not Matryoshka-trained", xticks=info.ladder())
right.set(xscale="log", xlabel=f"index size for {len(vectors):,} vectors (KiB, log)", ylabel="recall@10",
          title="Memory vs recall (labels: dimension)")
for budget in (1 << 20, 256 << 10):
    right.axvline(budget / 2**10, color="grey", ls="--", lw=0.8)
    right.text(budget / 2**10, 0.3, f" {format_bytes(budget)}", color="grey", fontsize=8)
left.legend(fontsize=8)
right.legend(fontsize=7, loc="lower right")
left.grid(alpha=0.3)
right.grid(alpha=0.3)
fig.tight_layout()
plt.show()"""),
md("""What the planner picks when Matryoshka is declared, by budget: `prefer="truncate"` (the default, right for
Matryoshka-trained models) against `prefer="quantize"`, with the recall measured above. Its `expected_recall` describes
the codec only; the loss from truncation depends on the model, so measure it on your own data as here."""),
code("""measured = {(r["factory"], r["dim"]): r["recall"] for r in results}
for budget in (1 << 20, 512 << 10, 256 << 10):
    for prefer in ("truncate", "quantize"):
        p = plan_index(len(vectors), budget, llm=mrl, prefer=prefer)
        print(f"{format_bytes(budget):>10} {prefer:>8}: {p.factory:>4} d={p.dimension:<3} "
              f"expected {p.expected_recall:.2f}, measured {measured[(p.factory, p.dimension)]:.3f}")
print(f"without Matryoshka, 1 MiB: {plan.factory} d={plan.dimension}, measured {measured[(plan.factory, 384)]:.3f}")"""),
md("""## 6. Throughput vs the engine's token budget

`LLM(max_num_batched_tokens=...)` bounds the padded tokens of one forward pass (rows x padded length), and so the
activation memory. The scheduler sorts prompts by length and pads each pass to its longest member (rounded up to a
length bucket). A small budget means many small passes; a large one means few passes, but each spans a wider range of
lengths and pads more. On a GPU larger passes keep the device busy; on a couple of CPU cores throughput levels off
(or drops with the padding) once a pass holds a few dozen chunks. Timings on a shared machine are noisy (best of 2)."""),
code("""from poolkit.scheduler import schedule

rng = np.random.default_rng(0)
sample = [texts[i] for i in rng.choice(len(texts), 128, replace=False)]
budgets = [256, 1024, 4096, 16384]
rates, padding = [], []
for budget in budgets:
    engine = LLM(max_num_batched_tokens=budget)
    lengths = [len(ids) for ids in engine.tokenizer(sample)["input_ids"]]
    pad = engine.engine.runner.padded_length   # the length buckets
    passes = schedule(lengths, engine.engine.scheduler_config, pad)
    padding.append(sum(len(b) * pad(max(lengths[i] for i in b)) for b in passes) / sum(lengths))
    engine.embed(sample[:8], use_tqdm=False)   # warm-up
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        engine.embed(sample, use_tqdm=False)
        seconds.append(time.perf_counter() - start)
    rates.append(sum(lengths) / min(seconds))
    print(f"budget {budget:>6}: {len(passes):>3} passes, padded/real tokens {padding[-1]:.2f}, "
          f"{len(sample) / min(seconds):5.0f} chunks/s, {rates[-1]:6.0f} tokens/s")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(budgets, rates, "o-", label="tokens/s")
ax.set(xscale="log", xlabel="max_num_batched_tokens (log)", ylabel="real tokens/s", ylim=(0, None),
       title=f"all-MiniLM-L6-v2, {len(sample)} chunks, {llm.device} {str(llm.dtype).removeprefix('torch.')}")
ax.set_xticks(budgets, [str(b) for b in budgets])
twin = ax.twinx()
twin.plot(budgets, padding, "s--", color="tab:orange", label="padded / real tokens")
twin.set(ylabel="padded / real tokens", ylim=(1, None))
fig.legend(loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0.0))
ax.grid(alpha=0.3)
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()"""),
md("""## Where to go next

* `store.save_local("rag-index")` / `PoolkitFAISS.load_local("rag-index", embeddings)`: no pickle anywhere.
* The same retriever against a server: `PoolkitEmbeddings(base_url="http://127.0.0.1:8000")` (notebook 03).
* Larger corpora: `poolkit embed` writes the embeddings of a whole corpus to resumable Parquet shards, and `VectorIndex.from_texts` streams
  texts through the engine in batches while building any planned index."""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).resolve().parents[1] / "02_rag_faiss_langchain.ipynb")

"""MinHash signature speed: lmforge's vectorised MinHasher against datasketch, character 5-grams, 128 perms.

Corpus: the shared pretraining files replicated with small random character edits to ~5 MB.
datasketch runs the way pipelines use it today (one `MinHash.update` per distinct 5-gram, utf-8
encoded) on a random sample of documents within a time budget; its `update_batch` is shown too.
Rates are MB of utf-8 text per CPU second of this one process (wall-clock rates printed alongside):
the machine may be shared, and CPU time does not count other processes' turns.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from datasketch import MinHash

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.data.steps.minhash import MinHasher

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET_BYTES = 5_000_000
BATCH = 1000
DATASKETCH_BUDGET_S = 60.0


def source_docs(data: Path) -> list[str]:
    pretrain = data / "pretrain"
    fever = (pretrain / "fever.txt").read_text(encoding="utf-8").splitlines()
    c4 = [json.loads(line)["text"] for line in (pretrain / "c4_demo.jsonl").open(encoding="utf-8")]
    wiki = (pretrain / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    return [t for t in fever + c4 + wiki if t.strip()]


def edited(text: str, rng: random.Random) -> str:
    """A near-duplicate: about one character in 200 substituted by a neighbour from the same text."""
    chars = list(text)
    for _ in range(max(1, len(chars) // 200)):
        chars[rng.randrange(len(chars))] = rng.choice(chars)
    return "".join(chars)


def build_corpus(sources: list[str], target_bytes: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    corpus, size = list(sources), sum(len(t.encode()) for t in sources)
    while size < target_bytes:
        text = edited(rng.choice(sources), rng)
        corpus.append(text)
        size += len(text.encode())
    rng.shuffle(corpus)
    return corpus


def mb(texts: list[str]) -> float:
    return sum(len(t.encode()) for t in texts) / 1e6


def timed(run) -> tuple[float, float]:
    """(wall, cpu) seconds of `run()`; CPU time of this process is the honest one-core rate when shared."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def lmforge_seconds(corpus: list[str], repeats: int = 3) -> tuple[float, float]:
    """Best (wall, cpu) seconds over `repeats` passes of the whole corpus in batches of BATCH documents."""
    hasher = MinHasher(num_perm=128, ngram=5)
    batches = [corpus[i : i + BATCH] for i in range(0, len(corpus), BATCH)]
    runs = [timed(lambda: [hasher.signatures(batch) for batch in batches]) for _ in range(repeats)]
    return min(w for w, _ in runs), min(c for _, c in runs)


def datasketch_update(text: str) -> MinHash:
    """The common recipe: one `update` per distinct 5-gram."""
    sketch = MinHash(num_perm=128)
    for shingle in {text[i : i + 5] for i in range(max(len(text) - 4, 1))}:
        sketch.update(shingle.encode("utf-8"))
    return sketch


def datasketch_update_batch(text: str) -> MinHash:
    """datasketch's faster path, for reference: all distinct 5-grams in one `update_batch`."""
    sketch = MinHash(num_perm=128)
    sketch.update_batch([s.encode("utf-8") for s in {text[i : i + 5] for i in range(max(len(text) - 4, 1))}])
    return sketch


def datasketch_seconds(corpus: list[str], signature, budget_s: float) -> tuple[float, float, float]:
    """(wall, cpu, MB): documents in random order until the corpus or the time budget runs out."""
    sample = random.Random(1).sample(corpus, len(corpus))
    done = []

    def run() -> None:
        deadline = time.perf_counter() + budget_s
        for text in sample:
            signature(text)
            done.append(text)
            if time.perf_counter() > deadline:
                break

    return (*timed(run), mb(done))


def main() -> None:
    corpus = build_corpus(source_docs(SHARED_DATA), TARGET_BYTES)
    size = mb(corpus)
    print(f"corpus: {len(corpus)} docs, {size:.2f} MB utf-8; 128 permutations, character 5-grams, one core")
    wall, cpu = lmforge_seconds(corpus)
    ours = size / cpu
    print(
        f"lmforge MinHasher.signatures, batches of {BATCH}: {ours:.2f} MB/s cpu, {size / wall:.2f} MB/s wall"
    )
    wall, cpu, sampled = datasketch_seconds(corpus, datasketch_update, DATASKETCH_BUDGET_S)
    theirs = sampled / cpu
    print(
        f"datasketch update per 5-gram ({sampled:.2f} MB): {theirs:.3f} MB/s cpu, {sampled / wall:.3f} wall"
    )
    wall, cpu, sampled = datasketch_seconds(corpus, datasketch_update_batch, DATASKETCH_BUDGET_S / 3)
    batched = sampled / cpu
    print(f"datasketch update_batch ({sampled:.2f} MB): {batched:.3f} MB/s cpu, {sampled / wall:.3f} wall")
    print(f"speedup: {ours / theirs:.1f}x vs update per 5-gram, {ours / batched:.1f}x vs update_batch")
    print(f"RESULT minhash_speedup_vs_datasketch={ours / theirs:.1f} minhash_mb_per_s={ours:.2f}")


if __name__ == "__main__":
    main()

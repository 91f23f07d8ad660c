"""The bench scripts' own logic (their timings are measured by running them, never asserted here)."""

import importlib.util
import itertools
import random
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unique_tokens_counts_each_trie_node_once():
    """llamacpp_vs_hf's limit evaluates the prefix trie's tokens: as many as the distinct prefixes."""
    unique_tokens = _load("llamacpp_vs_hf").unique_tokens
    rng = random.Random(0)
    shared = [rng.randrange(50) for _ in range(20)]
    seqs = [shared[: rng.randrange(5, 20)] + [rng.randrange(4) for _ in range(rng.randrange(1, 6))] for _ in range(40)]
    seqs += [seqs[3], seqs[3][:7], []]  # a repeat, a prefix of another sequence, an empty one
    prefixes = {tuple(s[:i]) for s in seqs for i in range(1, len(s) + 1)}
    tokens = unique_tokens(seqs)
    assert len(tokens) == len(prefixes)
    assert sorted(tokens) == sorted(p[-1] for p in prefixes)
    assert unique_tokens([[1, 2, 3], [1, 2, 3]]) == [1, 2, 3]
    assert unique_tokens([[1, 2], [2, 1]]) == [1, 2, 2, 1]
    assert list(itertools.chain(unique_tokens([]))) == []

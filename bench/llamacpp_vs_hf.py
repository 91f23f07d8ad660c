"""CPU choice-scoring throughput of the llamacpp backend against the hf backend, on the same Q-Pain
prompts in one run, plus their agreement on P(option).

- hf: the embedded SmolLM2-135M GGUF de-quantised to float32 (HFBackend, batched);
- llamacpp: the same GGUF run by llama.cpp as is (Q4_1), the multi-sequence scorer (issue 22);
- limit: llama.cpp's own raw evaluation of the unique tokens (the nodes of the prompts' and options'
  prefix trie: every token any scorer must evaluate at least once), decoded in 512-token batches of a
  plain flash-attention context, cleared between batches, last logits only.
All are loaded first; each scores all requests --repeats times, interleaved; medians are compared.

    python bench/llamacpp_vs_hf.py [--task qpain --data-dir DIR] [--limit N] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from benchmark.backends.hf import HFBackend
from benchmark.backends.llamacpp import LlamaCppBackend
from benchmark.config import load_models
from benchmark.kinds.text.expand import expand
from benchmark.data.text import load_cases
from benchmark.kinds.text.prompts import build_requests
from benchmark.kinds.options import option_probabilities
from benchmark.cards import load_task


def unique_tokens(sequences: list[list[int]]) -> list[int]:
    """The tokens of the prefix trie of ``sequences`` (each shared prefix counted once)."""
    root: dict = {}
    out = []
    for seq in sequences:
        node = root
        for tok in seq:
            if tok not in node:
                node[tok] = {}
                out.append(tok)
            node = node[tok]
    return out


def raw_eval(lc: LlamaCppBackend, tokens: list[int], batch: int = 512):
    """A function timing llama.cpp's plain evaluation of ``tokens`` (no scoring logic around it)."""
    import llama_cpp

    ref = llama_cpp.Llama(model_path=str(lc.llm.model_path), n_ctx=batch, n_batch=batch, n_ubatch=batch,
                          n_threads=lc.threads, n_threads_batch=lc.threads, flash_attn=True, verbose=False)

    def run(_requests):
        for i in range(0, len(tokens), batch):
            ref.reset()
            ref._ctx.kv_cache_clear()
            ref.eval(tokens[i:i + batch])
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="qpain-demo")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for both backends (default: all cores)")
    args = ap.parse_args()

    card = load_task(args.task)
    cases, _, _ = load_cases(card, args.data_dir)
    cases = cases[: args.limit] if args.limit else cases
    requests = [r for r in build_requests(card, expand(cases, card.counterfactual, 0), card.default_mode, 0) if r.method == "choice"]
    models = load_models()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf = HFBackend(models.get("smollm2-135m"))
    spec = models.get("smollm2-135m-llamacpp")
    if args.threads:
        spec = spec.model_copy(update={"extra": {**spec.extra, "n_threads": args.threads}})
    lc = LlamaCppBackend(spec)
    n_tokens = sum(len(hf._encode_prompt(hf.render(r.prompt))) for r in requests)

    seqs = []
    for r in requests:
        ids = lc.encode_prompt(lc.render(r.prompt))
        seqs += [ids + lc.encode_option(o)[:-1] for o in r.options]  # an option's last token is read, not evaluated
    unique = unique_tokens(seqs)
    limit = raw_eval(lc, unique)
    times = {"hf": [], "llamacpp": [], "limit": []}
    for _ in range(args.repeats):  # interleaved: load bursts hit all three alike
        for name, fn in (("hf", hf.score_choices), ("llamacpp", lc.score_choices), ("limit", limit)):
            t0 = time.perf_counter()
            out = fn(requests)
            times[name].append(time.perf_counter() - t0)
            if name == "hf":
                res_hf = out
            elif name == "llamacpp":
                res_lc = out
    t_hf, t_lc, t_lim = (statistics.median(times[k]) for k in ("hf", "llamacpp", "limit"))
    sc = lc._scorer()

    same_prompt = sum(a.rendered_prompt == b.rendered_prompt for a, b in zip(res_hf, res_lc))
    deltas = []
    for r, a, b in zip(requests, res_hf, res_lc):
        pa, pb = option_probabilities(a.option_logprobs), option_probabilities(b.option_logprobs)
        deltas.extend(abs(x - y) for x, y in zip(pa, pb))
    mean_d = statistics.fmean(deltas)
    print(f"task {args.task}: {len(requests)} choice requests, {n_tokens} prompt tokens, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"hf (float32, batched)        {t_hf:8.3f} s  {len(requests) / t_hf:8.1f} req/s")
    print(f"llamacpp (Q4_1, multi-seq)  {t_lc:8.3f} s  {len(requests) / t_lc:8.1f} req/s")
    print(f"limit (raw eval, {len(unique)} unique tokens) {t_lim:8.3f} s")
    print(f"ratio llamacpp/hf throughput: {t_hf / t_lc:.2f}x")
    print(f"ratio llamacpp time / limit: {t_lc / t_lim:.2f}x (scorer decoded {sc.tokens_evaluated // args.repeats} tokens per pass)")
    print(f"identical rendered prompts: {same_prompt}/{len(requests)}")
    print(f"|dP(option)| llamacpp vs hf: mean {mean_d:.4f}, max {max(deltas):.4f}, "
          f"p95 {sorted(deltas)[math.ceil(0.95 * len(deltas)) - 1]:.4f}")


if __name__ == "__main__":
    main()

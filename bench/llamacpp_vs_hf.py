"""CPU choice-scoring throughput of the llamacpp backend against the hf backend, on the same Q-Pain
prompts in one run, plus their agreement on P(option).

- hf: the embedded SmolLM2-135M GGUF de-quantised to float32 (HFBackend, batched);
- llamacpp: the same GGUF run by llama.cpp as is (Q4_1), one prompt at a time with prefix reuse.
Both are loaded first; each scores all requests --repeats times; medians are compared.

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


def timed(fn, requests, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(requests)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


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

    t_hf, res_hf = timed(hf.score_choices, requests, args.repeats)
    t_lc, res_lc = timed(lc.score_choices, requests, args.repeats)

    same_prompt = sum(a.rendered_prompt == b.rendered_prompt for a, b in zip(res_hf, res_lc))
    deltas = []
    for r, a, b in zip(requests, res_hf, res_lc):
        pa, pb = option_probabilities(a.option_logprobs), option_probabilities(b.option_logprobs)
        deltas.extend(abs(x - y) for x, y in zip(pa, pb))
    mean_d = statistics.fmean(deltas)
    print(f"task {args.task}: {len(requests)} choice requests, {n_tokens} prompt tokens, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"hf (float32, batched)        {t_hf:8.3f} s  {len(requests) / t_hf:8.1f} req/s")
    print(f"llamacpp (Q4_1, prefix reuse) {t_lc:8.3f} s  {len(requests) / t_lc:8.1f} req/s")
    print(f"ratio llamacpp/hf throughput: {t_hf / t_lc:.2f}x")
    print(f"identical rendered prompts: {same_prompt}/{len(requests)}")
    print(f"|dP(option)| llamacpp vs hf: mean {mean_d:.4f}, max {max(deltas):.4f}, "
          f"p95 {sorted(deltas)[math.ceil(0.95 * len(deltas)) - 1]:.4f}")


if __name__ == "__main__":
    main()

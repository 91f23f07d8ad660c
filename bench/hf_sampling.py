"""hf sampled generation: k samples of one prompt drawn one request at a time (``HFBackend.generate``,
the audit's path: each sample its own seeded request) against one ``num_return_sequences=k`` call
(``HFBackend.sample_texts``, simpo-distill's generate mode), on the same Q-Pain ``explain`` prompts.

    OMP_NUM_THREADS=1 python bench/hf_sampling.py [--model smollm2-135m] [--prompts 2] [--k 4] [--threads 1]

Prints torch's thread count, the machine's load average before and after, and per form: wall seconds,
generated tokens (up to each row's EOS), ms per generated token and seconds per sample. float32
batch-1 decoding of a 135M model reads all weights per token (memory-bound), so k rows per step
should cost little more than one row.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from benchmark.backends.hf import HFBackend
from benchmark.cards import load_task
from benchmark.config import load_models
from benchmark.data.text import load_cases
from benchmark.kinds.text.expand import expand
from benchmark.kinds.text.prompts import build_requests, sample_seed


def n_tokens(be: HFBackend, texts: list[str]) -> int:
    return sum(len(be.tokenizer(t, add_special_tokens=False).input_ids) for t in texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="qpain-demo")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    be = HFBackend(load_models().get(a.model))
    card = load_task(a.task)
    cases = load_cases(card, None)[0]
    variants = expand(cases[:1], card.counterfactual, 0)[: a.prompts]
    reqs = [dataclasses.replace(r, max_new_tokens=a.max_new_tokens)
            for r in build_requests(card, variants, "explain", 0, temperature=a.temperature) if r.sample == 0][: a.prompts]
    be.sample_texts(reqs[:1], 1)  # warm-up (first-call allocations)

    t0 = time.perf_counter()
    one_by_one = []
    for r in reqs:  # k seeded requests per prompt, one generate call each, as the audit draws samples
        one_by_one.append([be.generate([dataclasses.replace(r, seed=sample_seed(0, i), sample=i)])[0].raw_output
                           for i in range(a.k)])
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = be.sample_texts(reqs, a.k)
    t_nrs = time.perf_counter() - t0
    load1 = os.getloadavg()

    print(f"model {a.model}, {len(reqs)} prompts x k={a.k}, temperature {a.temperature}, max_new_tokens {a.max_new_tokens}, "
          f"torch threads {torch.get_num_threads()}, load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    for name, texts, secs in (("generate, one request per sample", one_by_one, t_seq),
                              ("sample_texts, num_return_sequences=k", batched, t_nrs)):
        toks = n_tokens(be, [t for ts in texts for t in ts])
        print(f"{name:40s} {secs:7.1f} s  {toks:5d} tokens  {1000 * secs / max(toks, 1):6.1f} ms/token  "
              f"{secs / (len(reqs) * a.k):5.2f} s/sample")
    print(f"speed-up per sample: {t_seq / t_nrs:.2f}x")


if __name__ == "__main__":
    main()

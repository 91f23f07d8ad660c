"""Sampled generation time per backend, the generative audit's path (``Backend.generate``, one seeded
request at a time), on the same Q-Pain ``explain`` requests in one run (issue 25, item 5).

- hf: the embedded SmolLM2-135M GGUF de-quantised to float32 (HFBackend), the baseline;
- llamacpp: the same GGUF run by llama.cpp as is (Q4_1), in-process;
- openai (optional, --openai-model): an OpenAI-compatible server already running, e.g. llama.cpp's on the
  same GGUF (models.yaml ``smollm2-135m-server`` names the command), through the openai backend
  (HTTP, sampling parameters as the backend sends them; the server's own defaults otherwise).
Both are loaded first (load time is not counted), warmed up on one request, then generate all requests
--repeats times, interleaved (hf, llamacpp, hf, ...), so load drift hits both alike. Each repeat uses a
different seed, so the lengths vary as in an audit.

    python bench/generation_time.py [--task qpain-demo] [--prompts 8] [--repeats 2] [--max-new-tokens 160]
                                    [--threads N] [--openai-model smollm2-135m-server]

Prints the thread counts, the load average before and after, and per backend: median seconds per
generation, seconds per 100 generations, generated tokens per generation (hf tokenizer; both share
SmolLM2's vocabulary, generation stops at EOS or --max-new-tokens) and ms per generated token; then the
ratio of each backend to hf (seconds per generation and ms per token), from the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from benchmark.backends.hf import HFBackend
from benchmark.backends.llamacpp import LlamaCppBackend
from benchmark.cards import load_task
from benchmark.config import load_models
from benchmark.data.text import load_cases
from benchmark.kinds.text.expand import expand
from benchmark.kinds.text.prompts import build_requests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="qpain-demo")
    ap.add_argument("--hf-model", default="smollm2-135m")
    ap.add_argument("--llamacpp-model", default="smollm2-135m-llamacpp")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--openai-model", default=None, help="a registered openai-backend model whose server is running")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both backends (default: each backend's own: torch's, llama.cpp's idle cores)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    models, card = load_models(), load_task(a.task)
    cases = load_cases(card, None)[0]
    variants = expand(cases, card.counterfactual, 0)

    def requests(seed: int):
        reqs = [dataclasses.replace(r, max_new_tokens=a.max_new_tokens)
                for r in build_requests(card, variants, "explain", seed, temperature=a.temperature) if r.sample == 0]
        return reqs[: a.prompts]

    hf = HFBackend(models.get(a.hf_model))
    lc_spec = models.get(a.llamacpp_model)
    if a.threads:
        lc_spec = lc_spec.model_copy(update={"extra": {**lc_spec.extra, "n_threads": a.threads}})
    lc = LlamaCppBackend(lc_spec)
    backends = {"hf": hf, "llamacpp": lc}
    if a.openai_model:
        from benchmark.backends.openai import OpenAIBackend

        backends["openai"] = OpenAIBackend(models.get(a.openai_model))
    for be in backends.values():
        be.generate(requests(0)[:1])  # warm-up: first-call allocations

    def n_tokens(text: str) -> int:
        return len(hf.tokenizer(text, add_special_tokens=False).input_ids)

    load0 = os.getloadavg()
    per_gen = {name: [] for name in backends}
    per_tok = {name: [] for name in backends}
    tokens = {name: 0 for name in backends}
    n_gen = 0
    for rep in range(a.repeats):
        reqs = requests(1000 + rep)
        n_gen += len(reqs)
        for name, be in backends.items():
            t0 = time.perf_counter()
            texts = [res.raw_output or "" for res in be.generate(reqs)]
            secs = time.perf_counter() - t0
            toks = sum(n_tokens(t) for t in texts)
            tokens[name] += toks
            per_gen[name].append(secs / len(reqs))
            per_tok[name].append(1000 * secs / max(toks, 1))
    load1 = os.getloadavg()

    print(f"task {a.task}, prompt mode explain, {a.prompts} requests x {a.repeats} repeats, temperature {a.temperature}, "
          f"max_new_tokens {a.max_new_tokens}; torch threads {torch.get_num_threads()}, llama.cpp threads {lc.threads}, "
          f"{os.cpu_count()} cores; load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    med = {}
    for name in backends:
        g, t = statistics.median(per_gen[name]), statistics.median(per_tok[name])
        med[name] = (g, t)
        print(f"{name:9s} {g:6.2f} s/generation  {100 * g:7.0f} s per 100 generations  "
              f"{tokens[name] / n_gen:6.1f} tokens/generation  {t:6.1f} ms/token")
    for name in list(backends)[1:]:
        print(f"{name} / hf: {med[name][0] / med['hf'][0]:.2f}x the time per generation, "
              f"{med[name][1] / med['hf'][1]:.2f}x the time per token")
    for be in backends.values():
        be.close()


if __name__ == "__main__":
    main()

"""Choice-scoring throughput against the raw forward time of the same token batches.

Both sides run in this process on the same model and the same padded batches:
- fairbench: HFBackend.score_choices (chat template, tokenisation, sorting, batching, forward,
  option gather);
- limit: only the model forward of the identical batches (logits of the last position only);
- full-logits forward: the same batches computing logits at every position (what a naive loop does).
Prints medians over --repeats and the ratios. Target (issue 2): fairbench / limit <= 1.15.

    python bench/choice_scoring.py [--model smollm2-135m] [--task qpain-demo] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.backends.hf import HFBackend
from benchmark.config import load_models
from benchmark.counterfactual import expand
from benchmark.data import load_cases
from benchmark.requests import build_requests
from benchmark.taskcard import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="qpain-demo")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    card = load_task(args.task)
    cases, _, _ = load_cases(card, args.data_dir)
    cases = cases[: args.limit] if args.limit else cases
    requests = [r for r in build_requests(card, expand(cases, card.counterfactual, 0), card.default_mode, 0) if r.method == "choice"]
    backend = HFBackend(load_models().get(args.model))

    # The identical batches fairbench forms: same tokens, order and batch sizes.
    ids = sorted((backend._encode_prompt(backend.render(r.prompt)) for r in requests), key=len, reverse=True)
    batches, pos = [], 0
    while pos < len(ids):
        size = backend.batch_size_for(len(ids[pos]))
        batches.append([backend._pad_left(ids[pos : pos + size])])
        pos += size
    n_tokens = sum(len(x) for x in ids)

    @torch.inference_mode()
    def forward(keep: int) -> None:
        for (inp, mask, positions), in batches:
            backend.model(input_ids=inp, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    backend.score_choices(requests[:4])  # warm-up
    t_fair, t_limit, t_full = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits all three alike
        t_limit.append(timed(lambda: forward(1)))
        t_fair.append(timed(lambda: backend.score_choices(requests)))
        t_full.append(timed(lambda: forward(0)))
    fair, limit, full = (statistics.median(x) for x in (t_fair, t_limit, t_full))
    print(f"model={args.model} task={args.task} requests={len(requests)} tokens={n_tokens} batches={len(batches)} repeats={args.repeats}")
    print(f"fairbench score_choices : {fair:8.2f} s  ({n_tokens / fair:7.0f} tok/s)")
    print(f"limit: forward, last pos: {limit:8.2f} s  ({n_tokens / limit:7.0f} tok/s)")
    print(f"forward, all logits     : {full:8.2f} s  ({n_tokens / full:7.0f} tok/s)")
    print(f"ratio fairbench / limit      = {fair / limit:.3f}  (target <= 1.15)")
    print(f"ratio all-logits / fairbench = {full / fair:.3f}")


if __name__ == "__main__":
    main()

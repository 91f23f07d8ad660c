"""Choice-scoring throughput against the raw forward time of the same token batches.

Both sides run in this process on the same model and the same padded batches:
- fairbench: HFBackend.score_choices (chat template, tokenisation, sorting, batching, forward,
  option gather);
- limit: only the model forward of the identical batches (logits of the last position only);
- full-logits forward: the same batches computing logits at every position (what a naive loop does);
- naive baseline (--naive N, the seed code's method): for the first N prompts, greedy-generate 20
  tokens one prompt at a time and read the first token as yes/no; compared with fairbench on the
  same N prompts.
Prints medians over --repeats and the ratios. Targets: fairbench / limit <= 1.15 (issue 2),
<= 1.10 (issue 9, Q-Pain zero-shot, 400 variants: --task qpain --data-dir DIR --per-file 10).

    python bench/choice_scoring.py [--task qpain-demo] [--repeats 3]
    python bench/choice_scoring.py --task qpain --data-dir ../shared/data --per-file 10 --naive 24
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # noqa: E402

from benchmark.backends.hf import HFBackend  # noqa: E402
from benchmark.config import load_models  # noqa: E402


def naive_generate(backend: HFBackend, requests, max_new_tokens: int = 20) -> list[str]:
    """The seed code's method: generate 20 tokens, then read the first token."""
    out = []
    with torch.inference_mode():
        for r in requests:
            ids = torch.tensor([backend._encode_prompt(backend.render(r.prompt))], device=backend.device)
            gen = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                         min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=backend.tokenizer.pad_token_id)
            out.append(backend.tokenizer.decode(gen[0, ids.shape[1] : ids.shape[1] + 1]).strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    workload.add_args(ap)
    ap.set_defaults(task="qpain-demo", per_file=10**6, question="all")
    ap.add_argument("--mode", default="zero_shot")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive", type=int, default=0, help="also time the generate-20-tokens baseline on the first N prompts")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    requests = [r for r in workload.build(args, args.mode) if r.method == "choice"]
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
    backend.score_choices(requests)
    shared = len(backend._prefix_memo[0]) if backend._prefix_memo else 0
    print(f"shared prefix: {shared} tokens (0: every prompt runs whole, as in the limit)")
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
    print(f"ratio all-logits / fairbench = {full / fair:.3f}", flush=True)
    summary = {"requests": len(requests), "tokens": n_tokens, "batches": len(batches), "repeats": args.repeats,
               "fairbench_s": fair, "limit_s": limit, "all_logits_s": full, "fairbench_over_limit": fair / limit,
               "all_logits_over_fairbench": full / fair, "seconds_all": {"fairbench": t_fair, "limit": t_limit, "all_logits": t_full}}
    if args.naive:
        subset = requests[: args.naive]
        t_naive, t_sub = [], []
        for _ in range(args.repeats):
            t_sub.append(timed(lambda: backend.score_choices(subset)))
            t_naive.append(timed(lambda: naive_generate(backend, subset)))
        naive, sub = statistics.median(t_naive), statistics.median(t_sub)
        print(f"naive generate-20, {len(subset)} prompts: {naive:8.2f} s vs fairbench {sub:6.2f} s -> ratio naive / fairbench = {naive / sub:.2f}")
        summary.update({"naive_prompts": len(subset), "naive_s": naive, "fairbench_subset_s": sub, "naive_over_fairbench": naive / sub})
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

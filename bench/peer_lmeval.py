"""fairbench against lm-evaluation-harness (the peer) on the same Q-Pain prompts, in one process.

Both score log P(option | prompt) for the same model object (SmolLM2-135M, HF fp32, CPU):
- fairbench: HFBackend.score_choices (one forward per prompt, last-position logits, shared-prefix
  KV cache when prompts share a long prefix such as few-shot examples);
- fairbench without the shared prefix (HFBackend.share_prefix = False), to show what it buys;
- lm-eval: lm_eval.models.huggingface.HFLM on (rendered prompt, option) pairs, i.e. what its
  `multiple_choice` output type sends, at --lmeval-batch: tokenised with HFLM.tok_encode and scored
  by HFLM._loglikelihood_tokens (its batching, length sorting, context grouping and forward).
  HFLM.loglikelihood itself is bypassed for one step only: its _encode_pair moves the context's
  trailing whitespace into the continuation, and a chat prompt ends with "assistant\n", so it would
  score "\nYes" (two tokens) instead of "Yes".
BOS: both sides get the chat-template text, which starts with <|im_start|> (the tokenizer's BOS);
HFLM is built with add_bos_token=False and its tok_encode skips adding BOS to text that already
starts with it, so the token ids are identical (checked below) and the log-likelihoods agree to
float tolerance.
Repetitions are interleaved; medians are reported.

lm-eval is a bench-only tool, not a fairbench dependency:  pip install "lm-eval==0.4.13"

    python bench/peer_lmeval.py --data-dir ../shared/data --per-file 5 --modes zero_shot few_shot --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # noqa: E402

from benchmark.backends.hf import HFBackend  # noqa: E402
from benchmark.config import load_models  # noqa: E402

TOLERANCE = 1e-3  # nats, max |Δ log P(option)| accepted between the two sides (fp32, different batch shapes)


def lmeval_pairs(backend: HFBackend, requests) -> list[tuple[str, str]]:
    return [(backend.render(r.prompt), backend.continuation(o)) for r in requests for o in r.options]


def lmeval_score(lm, pairs: list[tuple[str, str]]) -> list[float]:
    reqs = [((ctx, cont), lm.tok_encode(ctx), lm.tok_encode(cont, add_special_tokens=False)) for ctx, cont in pairs]
    return [lp for lp, _ in lm._loglikelihood_tokens(reqs, disable_tqdm=True)]


def check_tokens(backend: HFBackend, lm, requests) -> None:
    for r in requests:
        ctx = backend.render(r.prompt)
        for o in r.options:
            theirs = (lm.tok_encode(ctx), lm.tok_encode(backend.continuation(o), add_special_tokens=False))
            ours = (backend._encode_prompt(ctx), backend._encode_option(o))
            if list(theirs[0]) != ours[0] or list(theirs[1]) != ours[1]:
                raise SystemExit(f"token mismatch for {r.case_id}/{o}: lm-eval and fairbench would score different inputs")


def main() -> None:
    ap = argparse.ArgumentParser()
    workload.add_args(ap)
    ap.add_argument("--modes", nargs="+", default=["zero_shot", "few_shot"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lmeval-batch", type=int, default=8)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch
    from lm_eval.models.huggingface import HFLM

    backend = HFBackend(load_models().get(args.model))
    lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=args.lmeval_batch, add_bos_token=False, device=str(backend.device))
    summary = {"model": args.model, "lmeval_batch": args.lmeval_batch, "torch_threads": torch.get_num_threads(), "modes": {}}
    for mode in args.modes:
        requests = workload.build(args, mode)
        check_tokens(backend, lm, requests[:8])
        pairs = lmeval_pairs(backend, requests)
        n_tokens = sum(len(backend._encode_prompt(backend.render(r.prompt))) for r in requests)

        def fair(share: bool):
            backend.share_prefix, backend._prefix_memo = share, None  # the prefix is computed inside the timing
            t0 = time.perf_counter()
            res = backend.score_choices(requests)
            return time.perf_counter() - t0, [x for r in res for x in r.option_logprobs]

        def peer():
            t0 = time.perf_counter()
            res = lmeval_score(lm, pairs)
            return time.perf_counter() - t0, res

        fair(True)  # warm-up (allocator, kernels)
        times = {"fairbench": [], "fairbench_no_prefix": [], "lm_eval": []}
        for _ in range(args.repeats):  # interleaved: machine-load drift hits every side alike
            t, lp_fair = fair(True)
            times["fairbench"].append(t)
            t, lp_peer = peer()
            times["lm_eval"].append(t)
            t, lp_plain = fair(False)
            times["fairbench_no_prefix"].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = [abs(a - b) for a, b in zip(lp_fair, lp_peer)]
        diff_plain = [abs(a - b) for a, b in zip(lp_fair, lp_plain)]
        p_yes = lambda lps: [math.exp(lps[i]) / (math.exp(lps[i]) + math.exp(lps[i + 1])) for i in range(0, len(lps), 2)]  # noqa: E731
        dp = [abs(a - b) for a, b in zip(p_yes(lp_fair), p_yes(lp_peer))]
        row = {
            "requests": len(requests), "tokens": n_tokens, "repeats": args.repeats,
            "seconds_median": {k: round(v, 2) for k, v in med.items()},
            "seconds_all": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "lm_eval_over_fairbench": round(med["lm_eval"] / med["fairbench"], 3),
            "no_prefix_over_fairbench": round(med["fairbench_no_prefix"] / med["fairbench"], 3),
            "max_abs_loglik_diff_vs_lm_eval": max(diff),
            "max_abs_loglik_diff_shared_vs_unshared": max(diff_plain),
            "max_abs_p_yes_diff_vs_lm_eval": max(dp),
            "within_tolerance": max(diff) <= TOLERANCE,
        }
        summary["modes"][mode] = row
        print(f"[{mode}] requests={len(requests)} tokens={n_tokens} repeats={args.repeats}")
        for k, v in med.items():
            print(f"  {k:22s} {v:8.2f} s  ({n_tokens / v:7.0f} prompt tok/s)")
        print(f"  lm-eval / fairbench         = {row['lm_eval_over_fairbench']:.3f}")
        print(f"  no-prefix / fairbench       = {row['no_prefix_over_fairbench']:.3f}")
        print(f"  max |Δ loglik| vs lm-eval   = {max(diff):.2e} nats (tolerance {TOLERANCE:g}); max |Δ P(yes)| = {max(dp):.2e}")
        print(f"  max |Δ loglik| shared/unshared = {max(diff_plain):.2e} nats", flush=True)
        if args.json:  # after every mode, so a long run keeps what it measured
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Scoring multi-token answer options after a context whose KV cache is computed once."""

from __future__ import annotations

import torch


@torch.inference_mode()
def score_options_after_context(model, context_out, context_mask: torch.Tensor, options: list[list[int]], pad_id: int) -> list[float]:
    """Sum of log P(option tokens | context) for each option.

    ``context_out`` is the model output of a single context (batch 1) run with ``use_cache=True``;
    its cache is repeated once per option and the option tokens are scored in one batched pass.
    ``context_mask`` is the context's (1, n_ctx) attention mask.
    """
    device = context_mask.device
    first = torch.log_softmax(context_out.logits[0, -1].float(), dim=-1)
    cache = context_out.cache
    k, n_ctx = len(options), context_mask.shape[1]
    cache.batch_repeat_interleave(k)
    width = max(len(o) for o in options)
    ids = torch.full((k, width), pad_id, dtype=torch.long, device=device)
    cont_mask = torch.zeros((k, width), dtype=torch.long, device=device)
    for j, o in enumerate(options):
        ids[j, : len(o)] = torch.tensor(o, device=device)
        cont_mask[j, : len(o)] = 1
    mask = torch.cat([context_mask.expand(k, -1), cont_mask], dim=1)
    positions = torch.arange(n_ctx, n_ctx + width, device=device).expand(k, -1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    return [float(first[o[0]]) + sum(float(logp[j, t - 1, o[t]]) for t in range(1, len(o))) for j, o in enumerate(options)]

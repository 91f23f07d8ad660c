"""The Q-Pain benchmark workload shared by the bench scripts: the first N vignettes of each Q-Pain
file × 4 races × 2 genders, one question, in a task prompt mode. Same requests fairbench builds in a
run (task card, counterfactual expansion, prompt template); only the selection is made here."""

from __future__ import annotations

import argparse
from collections import defaultdict

from benchmark.kinds.text.expand import expand
from benchmark.data.text import load_cases
from benchmark.requests import Request
from benchmark.kinds.text.prompts import build_requests
from benchmark.cards import load_task


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--task", default="qpain")
    ap.add_argument("--data-dir", default=None, help="folder with the official Q-Pain CSVs (qpain/ inside)")
    ap.add_argument("--per-file", type=int, default=5, help="vignettes per Q-Pain file (5 -> 200 prompts)")
    ap.add_argument("--question", default="treat", help="question id to keep (all: every question)")
    ap.add_argument("--max-requests", type=int, default=None, help="keep only the first N requests (small runs on a loaded machine)")
    ap.add_argument("--model", default="smollm2-135m")


def build(args, mode: str) -> list[Request]:
    card = load_task(args.task)
    cases, report, _ = load_cases(card, args.data_dir)
    per: dict[str, int] = defaultdict(int)
    chosen = []
    for c in cases:
        if per[c.subset] < args.per_file:
            per[c.subset] += 1
            chosen.append(c)
    reqs = build_requests(card, expand(chosen, card.counterfactual, 0, report), mode, 0)
    reqs = [r for r in reqs if args.question == "all" or r.question_id == args.question]
    return reqs[: args.max_requests] if args.max_requests else reqs

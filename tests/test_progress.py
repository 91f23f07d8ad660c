"""Progress that moves: backends report each finished batch through ``Backend.report_progress``, so
the engine's bar advances inside a chunk (whose batching is unchanged) and shows an ETA from the
first finished batch."""

from __future__ import annotations

import re

import pytest
from fake_openai import FakeServer, completions_echo
from rich.progress import Progress

from benchmark.backends.hf import HFBackend
from benchmark.backends.openai import OpenAIBackend
from benchmark.config import ModelSpec
from benchmark.engine import execute, make_progress
from benchmark.progress import ETAColumn
from benchmark.requests import Request
from benchmark.store import RunStore

PROMPTS = ["Patient D has back pain.", "Pain after surgery.", "A broken arm.", "Kidney stones and vomiting.", "Cancer pain."]


def _requests(method: str) -> list[Request]:
    return [Request(case_id=str(i), question_id="q", attributes={}, prompt=p, options=["Yes", "No"], method=method,
                    max_new_tokens=2) for i, p in enumerate(PROMPTS)]


def _watch(progress: Progress) -> list[int]:
    """The bar's ``completed`` after each update."""
    seen: list[int] = []
    update = progress.update

    def recording(task_id, **kw):
        update(task_id, **kw)
        seen.append(int(progress.tasks[0].completed))

    progress.update = recording
    return seen


def _execute(tmp_path, backend, reqs, chunk=64):
    progress = make_progress(quiet=True)
    seen = _watch(progress)
    store = RunStore(tmp_path / "run")
    keys = [f"k{i}" for i in range(len(reqs))]
    try:
        execute(reqs, keys, store, lambda: backend, quiet=True, chunk=chunk, progress=progress)
    finally:
        store.close()
    return seen


@pytest.mark.parametrize("method", ["choice", "generate"])
def test_hf_bar_moves_per_batch_inside_a_chunk(tmp_path, tiny_llama_dir, method):
    backend = HFBackend(ModelSpec(name="tiny", backend="hf", model=str(tiny_llama_dir), chat_template=True, batch_size=1))
    seen = _execute(tmp_path, backend, _requests(method))
    # One chunk of 5 requests, batch size 1: the bar passes 1..4 before the chunk completes.
    assert seen[:-1] == [1, 2, 3, 4, 5] and seen[-1] == 5
    assert backend.on_progress is None  # the engine detaches its callback afterwards


def test_reports_never_pass_the_chunk(tmp_path, tiny_llama_dir):
    """Chunks of 2: the bar is exact at each chunk's end and never runs ahead of the chunk."""
    backend = HFBackend(ModelSpec(name="tiny", backend="hf", model=str(tiny_llama_dir), chat_template=True, batch_size=1))
    seen = _execute(tmp_path, backend, _requests("choice"), chunk=2)
    assert seen == sorted(seen) and seen[-1] == 5
    assert {2, 4, 5} <= set(seen) and 1 in seen and 3 in seen


def test_openai_reports_each_completed_request(tmp_path):
    with FakeServer(lambda path, payload, headers: (200, completions_echo(payload))) as srv:
        spec = ModelSpec(name="srv", backend="openai", model="m", chat_template=False, base_url=srv.base_url, max_concurrency=2)
        backend = OpenAIBackend(spec)
        calls: list[int] = []
        backend.on_progress = calls.append
        backend.score_choices(_requests("choice"))
        assert calls == [1] * len(PROMPTS)
        backend.on_progress = None
        seen = _execute(tmp_path, backend, _requests("choice"))
        backend.close()
    assert seen[:-1] == [1, 2, 3, 4, 5]


def test_eta_from_the_first_batch():
    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task_id = progress.add_task("x", total=5)
    eta = ETAColumn()
    assert "-:--" in eta.render(progress.tasks[0]).plain  # nothing finished yet: no estimate
    now[0] = 10.0
    progress.update(task_id, completed=1)  # the first batch took 10 s
    text = eta.render(progress.tasks[0]).plain
    assert re.fullmatch(r"eta 0:00:40", text), text  # 4 left at 10 s each


def test_llamacpp_reports_each_wave_and_each_generation():
    """Choice requests are scored in waves of up to n_seq - 1 prompts side by side (one report per
    wave, as its requests finish together); generations one by one."""
    from llamacpp_support import require_llama_cpp

    require_llama_cpp()
    from benchmark.backends.llamacpp import LlamaCppBackend
    from benchmark.config import load_models

    spec = load_models().get("smollm2-135m-llamacpp")
    calls: list[int] = []
    # extra.n_seq: 8 streams (7 prompts per wave), then 2 (one prompt per wave: a report per request).
    for n_seq, requests in ((8, _requests("choice")[:3]), (2, _requests("choice")[:3])):
        backend = LlamaCppBackend(spec.model_copy(update={"extra": {**spec.extra, "n_seq": n_seq}}))
        backend.on_progress = calls.append
        try:
            backend.score_choices(requests)
            if n_seq == 2:
                backend.generate(_requests("generate")[:2])
        finally:
            backend.close()
    assert calls == [3, 1, 1, 1, 1, 1]

"""The regression guard is not a test that cannot fail: planted changes make it fail (issue 22).

- a whitespace change in a prompt template changes the prompts of a fresh run (compared exactly);
- Holm replaced by Benjamini–Hochberg changes the statistics rescored from the stored outputs
  (compared at 1e-9).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record as R  # noqa: E402

RUN = "planted-qpain-zero_shot"


def test_whitespace_in_a_prompt_template_fails_the_guard(tmp_path, shared_data):
    tasks = tmp_path / "tasks"
    shutil.copytree(R.ROOT / "tasks", tasks)
    card = tasks / "qpain" / "task.yaml"
    text = card.read_text(encoding="utf-8")
    marker = "    template: |\n"
    i = text.index(marker) + len(marker)
    line_end = text.index("\n", i)
    card.write_text(text[:line_end] + " " + text[line_end:], encoding="utf-8")  # one trailing space
    runner = R.Runner(tmp_path / "work", data_dir=shared_data)
    runner.env = {"FAIRBENCH_TASKS_DIR": str(tasks)}
    fresh = R.output_rows(runner.run(RUN), "text")
    problems, _ = R.output_differences(R.output_rows(R.STORED / RUN, "text"), fresh, tol=0.0)
    assert problems and all(".prompt" in p or ".rendered_prompt" in p for p in problems), problems[:3]
    # ... and the unchanged card passes the same comparison.
    same = R.Runner(tmp_path / "work2", data_dir=shared_data).run(RUN)
    assert R.output_differences(R.output_rows(R.STORED / RUN, "text"), R.output_rows(same, "text"), 0.0)[0] == []


def test_benjamini_hochberg_instead_of_holm_fails_the_guard(tmp_path, monkeypatch):
    from benchmark.audits import stats

    original = stats.correct_with_level
    monkeypatch.setattr(stats, "correct_with_level", lambda tests, method="holm", alpha=0.05: original(tests, "fdr_bh", alpha))
    values = R.flatten(R.Runner(tmp_path).rescored_values(RUN))
    golden = {k: v for k, v in R.load_golden(RUN).items() if not k.startswith(("cli.", "fixture."))}
    problems = R.differences(golden, values, {})
    assert any("p_adjusted" in p for p in problems), problems[:5]
    monkeypatch.setattr(stats, "correct_with_level", original)
    assert R.differences(golden, R.flatten(R.Runner(tmp_path / "again").rescored_values(RUN)), {}) == []

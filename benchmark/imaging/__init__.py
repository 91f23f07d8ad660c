"""Imaging benchmarks: official dataset loaders, synth-xray, imaging backends and the run path.

Folder map: ``card.py`` (task-card schema) -> ``datasets/`` (official layouts) and ``synth.py``
-> ``dataset.py`` (the canonical table every loader returns) -> ``backends/`` (classifier, clip,
vlm) with ``train.py`` (the reusable training loop) -> ``thresholds.py`` -> ``evaluate.py``
(rows -> ``benchmark.audits.group``) -> ``engine.py`` (one run).
"""

"""Mitigation plugins (``fairbench mitigate``). Each produces a derived model ``<base>+<method>``
that is audited by the same run path as any model; none computes its own metrics.

- ``base.py``: the plugin API (``Mitigation.apply -> ModelArtifact``)
- ``split.py``: held-out split of cases by case id
- ``runner.py``: split, apply, manifest, derived-model registration
- ``simpo_distill.py`` (+ ``embedder.py``, ``training.py``): SimPO distillation (paper 000)
- ``steering.py`` (+ ``gaussian.py``, ``hooks.py``): optimal steering (paper 003) and baselines
"""

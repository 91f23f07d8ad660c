"""fairbench: fairness evaluation harness for medical AI (import package ``benchmark``).

The Python API (:mod:`benchmark.api`) is re-exported here: ``evaluate``, ``evaluate_grid``, ``score``,
``leaderboard``, ``check``, ``load`` and ``Results`` (imported on first use, so ``import benchmark``
stays light)."""

__version__ = "0.1.0"
SCHEMA_VERSION = 2  # 2: one schema for every kind (README: Results schema)

_API = ("evaluate", "evaluate_grid", "score", "leaderboard", "check", "load", "Results")
__all__ = ["SCHEMA_VERSION", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")

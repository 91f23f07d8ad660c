"""fairbench: fairness evaluation harness for medical AI (import package ``benchmark``)."""

__version__ = "0.1.0"
SCHEMA_VERSION = 2  # 2: one schema for every kind (README: Results schema)

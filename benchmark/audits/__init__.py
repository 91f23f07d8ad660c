"""Audits turn scored rows into metrics and tests. Registered under ``fairbench.audits``."""

"""Imaging backends, registered under ``fairbench.backends``: ``classifier`` (trained by fairbench),
``clip`` (zero-shot) and ``vlm`` (LLaVA-family, choice scoring or generation)."""

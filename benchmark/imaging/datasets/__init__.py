"""Loaders for the official layouts of the six imaging benchmarks (and synth-xray in ../synth.py).

Each is registered under ``fairbench.loaders`` and called as ``loader(card, root, report)``,
where ``root`` is the user's local copy (``--data-dir`` / ``$FAIRBENCH_DATA`` [/ ``data.subdir``]).
"""

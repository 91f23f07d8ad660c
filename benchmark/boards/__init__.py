"""Boards: what is read from finished runs: leaderboards (Markdown, CSV, plots), multi-seed boards, the `fairbench check` CI gate and the terminal report."""

"""Progress displays (rich): requests answered with an ETA, training steps with the loss, and bytes
downloaded. Only displays: the code that does the work reports through plain callbacks
(``Backend.report_progress``, a transformers ``TrainerCallback``, ``download(on_bytes=...)``), so
it stays testable and silent when nothing is shown."""

from __future__ import annotations

from datetime import timedelta

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class ETAColumn(ProgressColumn):
    """Time left = elapsed / completed x remaining, from the first finished batch on. Written here
    because rich's TimeRemainingColumn needs two speed samples in its window, i.e. shows nothing
    until the second batch (minutes for a large model)."""

    max_refresh = 0.5

    def render(self, task) -> Text:
        if task.finished:
            return Text("0:00:00", style="progress.remaining")
        if not task.completed or not task.total or not task.elapsed:
            return Text("-:--:--", style="progress.remaining")
        left = task.elapsed / task.completed * (task.total - task.completed)
        return Text(f"eta {timedelta(seconds=round(left))}", style="progress.remaining")


def request_progress(quiet: bool) -> Progress:
    """Requests answered per run (one bar per run of a grid): count, req/s (field ``rate``), ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        ETAColumn(),
        disable=quiet,
        transient=False,
    )


def training_progress(quiet: bool) -> Progress:
    """Optimizer steps (or epochs) with the latest training loss (field ``loss``) and an ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        ETAColumn(),
        disable=quiet,
        transient=False,
    )


def download_progress(quiet: bool) -> Progress:
    """Bytes of one file: done / total (when the server sends Content-Length) and the speed."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
    )

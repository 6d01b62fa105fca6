"""Progress bars with rates for long work (rich); status lines go to stderr, results to stdout."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar() -> Progress:
    """A bar showing done/total, a free-form `rate` field (e.g. "812 tok/s"), elapsed and ETA.

    Add tasks with `bar.add_task(description, total=N, rate="")` and update `rate` as work goes.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )

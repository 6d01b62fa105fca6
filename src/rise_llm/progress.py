"""Progress bars with rates for long work (rich); status lines go to stderr, results to stdout."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

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
_thread = threading.local()


@contextlib.contextmanager
def without_bars() -> Iterator[None]:
    """Hide the progress bars this thread starts, e.g. in the threads that collect the shards of
    a split collection (`pipeline.py`): several live displays at once would garble the terminal
    (and rich before 14 refuses them). Their status lines still print."""
    _thread.hidden = True
    try:
        yield
    finally:
        _thread.hidden = False


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
        disable=getattr(_thread, "hidden", False),
    )

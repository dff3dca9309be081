"""Progress display of long work: training steps, tiles, pyramid chunks (rich).

The console is passed in, so a test can capture what a user would see.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressDisplay:
    """Bars on ``console`` (default: stderr); silent when ``quiet`` or not a terminal.

    Parameters
    ----------
    console
        Where the bars go. A ``Console(file=..., force_terminal=True)`` captures them.
    quiet
        Show nothing.
    """

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        console = console if console is not None else Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=console, transient=True,
                            disable=quiet or not console.is_terminal)
        self.console, self.quiet = console, quiet

    def __enter__(self) -> ProgressDisplay:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def note(self, text: str) -> None:
        """A line for the log (where a run of many images is), unless ``quiet``."""
        if not self.quiet:
            self.console.print(text, highlight=False, markup=False)

    def steps(self, label: str) -> Callable[[int, int], None]:
        """A training bar: returns ``progress(step, total)`` (runs in turn may each report
        their own total)."""
        task = None

        def progress(step: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = self.bar.add_task(label, total=total, rate="", unit="steps")
            self.bar.update(task, completed=step, total=total)

        return progress

    def tasks(self, label: str, units: list[int], voxels: list[int],
              unit: str = "tiles") -> Callable[[int], None]:
        """A bar over tasks of ``units[i]`` units and ``voxels[i]`` voxels; returns done(i)."""
        task = self.bar.add_task(label, total=sum(units), rate="", unit=unit)
        start = time.perf_counter()
        done_voxels = 0

        def done(i: int) -> None:
            nonlocal done_voxels
            done_voxels += voxels[i]
            rate = done_voxels / max(time.perf_counter() - start, 1e-9)
            self.bar.update(task, advance=units[i], rate=f"{rate / 1e6:.2f} Mvoxel/s")

        return done

"""Guarded background tasks (kopf's idea): every watcher and timer of the daemon is started through `spawn` and
stopped through `stop`, and one that fails, or ends while nobody asked it to, is logged instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskGroup:
    """The daemon's long-lived tasks. Use on one event loop."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], bool] = {}  # task → may it end by itself?
        self._stopping = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, *, may_end: bool = False) -> asyncio.Task[None]:
        """Run `coro` until `stop()`. `may_end`: returning early is expected (e.g. a listener that found its
        source unavailable and said so); otherwise an early return is logged as an error."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = may_end
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        may_end = self._tasks.pop(task, True)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("%s failed; it is not running any more", task.get_name(), exc_info=error)
        elif not self._stopping and not may_end:
            log.error("%s ended unexpectedly; it is not running any more", task.get_name())

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        """Cancel every task and wait until all have ended."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""A daemon core (the device plugin's `Daemon`, the DRA driver) on its own event loop in a background thread, so a
test can drive kubelet, sysfs and the API server from the main thread while it runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from deviceplugin.core import DaemonCore

Core = TypeVar("Core", bound=DaemonCore)


class RunningCore(Generic[Core]):
    """`make()` builds the core on the loop's thread (asyncio objects belong to their loop); `run()` runs until
    `stop()`. Use as a context manager."""

    def __init__(self, make: Callable[[], Core], name: str) -> None:
        self._make = make
        self.core: Core | None = None
        self.result: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        async def main() -> int:
            self._loop = asyncio.get_running_loop()
            self.core = self._make()
            self._started.set()
            return await self.core.run()

        self.result = asyncio.run(main())

    def __enter__(self) -> Any:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine of the core on its loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def wait(self, timeout: float = 30.0) -> int | None:
        """Wait for `run()` to return on its own; its exit code."""
        self._thread.join(timeout)
        return self.result

    def stop(self) -> int | None:
        if self._loop is not None and self._thread.is_alive():
            assert self.core is not None
            self._loop.call_soon_threadsafe(self.core.stop)
            self._thread.join(30)
        return self.result

"""ADD's rollback as an undo stack (pyroute2's transaction idea): each step registers its undo as it is taken.

On failure the undos run in reverse, each logging its own failure instead of raising, so the error the caller
sees is the one that stopped the ADD; `commit()` at the end of a successful ADD drops them all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


class Rollback:
    """`with Rollback("ADD ctr/eth0") as rollback:` then `rollback.undo("delete veth x", del_link, host, "x")` after
    each step that took something, and `rollback.commit()` last. Leaving the block without `commit()`, by an
    exception of any kind (a CniError, a KeyboardInterrupt, a SystemExit), undoes the steps in reverse."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._stack = contextlib.ExitStack()

    def undo(self, description: str, func: Callable[..., object], *args: Any) -> None:
        self._stack.callback(self._run, description, func, args)

    def commit(self) -> None:
        self._stack.pop_all()

    def _run(self, description: str, func: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            func(*args)
        except Exception:
            log.warning("rollback of %s: could not %s", self.what, description, exc_info=True)

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.__exit__(exc_type, exc, tb)

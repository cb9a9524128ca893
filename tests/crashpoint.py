"""SIGKILL this process at its Nth call of a file-system function of `os`.

The IPAM crash-consistency tests run one operation in a child process that arms this, once for each N until the
operation completes, and check after each kill that the store holds exactly what it held before (or the finished
result): a node losing power, or the kernel OOM-killing a plugin, can stop an ADD between any two system calls.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

# Every os call the IPAM store makes on its directory. os.makedirs calls os.mkdir: both count, as separate steps.
OS_CALLS = ("open", "write", "close", "unlink", "rename", "link", "mkdir", "makedirs", "stat", "read", "scandir")


def arm(kill_at: int, names: tuple[str, ...] = OS_CALLS) -> None:
    """Replace each of `names` in `os` by a wrapper that counts calls and kills the process at call `kill_at`."""
    calls = 0

    def counted(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    for name in names:
        setattr(os, name, counted(getattr(os, name)))

"""Work that may wait until the runtime has its answer.

Some work serves the network rather than the answer. An ADD's gratuitous ARP, which tells the pod's neighbours its
MAC, costs the sender one copy per bridge port (~1.5 ms at 500 ports), all of it in the sending thread's softirq.
A DEL's link delete makes the kernel wait for RCU grace periods (~20-40 ms) long after the pod has lost the link
(see `cni.modes.retire.remove_pod_link`). In the node daemon such work is collected while the command runs and done
right after the reply is sent; everywhere else (the in-process path, tests) `later` simply runs it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger(__name__)

Action = Callable[[], None]
_pending: ContextVar[list[Action] | None] = ContextVar("vnfio_deferred", default=None)


def later(action: Action) -> None:
    """Run `action` after the reply if a caller is `collecting`, else now. It must own what it uses (a netns
    fd it dup'ed, say): the command's own resources are gone by the time it runs."""
    pending = _pending.get()
    if pending is None:
        action()
    else:
        pending.append(action)


def active() -> bool:
    """Whether `later` queues here (the node daemon runs this command) rather than running at once."""
    return _pending.get() is not None


@contextmanager
def collecting() -> Iterator[list[Action]]:
    """Within this block (in this thread), `later` queues instead of running; the caller runs the list."""
    actions: list[Action] = []
    token = _pending.set(actions)
    try:
        yield actions
    finally:
        _pending.reset(token)


def run(actions: list[Action]) -> None:
    """Run collected actions in order; a failure is logged and does not stop the rest (the answer is out)."""
    for action in actions:
        try:
            action()
        except Exception:
            log.warning("deferred work failed", exc_info=True)

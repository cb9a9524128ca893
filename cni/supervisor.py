"""Several serving processes of the node daemon on one listener, supervised: forked warm, restarted when one
dies, stopped by SIGTERM (which first stops accepting, so a replacement daemon can bind at once)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni.daemon import CniDaemon

log = logging.getLogger(__name__)


class Supervisor:
    """Several serving processes on one listener: the GIL lets one process use only one CPU for the Python part of
    the work (~14 ms of CPU per bridge ADD), while CNI calls for different pods arrive in parallel.

    The processes are forked after the warm-up and the bind, so each starts warm and the parent holds no threads
    when it forks. The parent only supervises: it restarts a serving process that dies, forwards SIGTERM, and
    removes the socket at the end. A serving process exits (finishing its running requests) if the parent dies.
    """

    def __init__(self, daemon: CniDaemon, processes: int) -> None:
        self.daemon = daemon
        self.processes = processes
        self._children: set[int] = set()
        self._stopping = False

    def _spawn(self) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.daemon.stop())
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            _die_with_parent(parent)
            self.daemon.serve(owns_socket=False)
        except BaseException:
            log.exception("serving process failed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _spawn_blocked(self) -> None:
        # Signals wait until the child is in our set (so stop() reaches it), and until the child has its own
        # handlers (ours, inherited, would signal its siblings).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            if not self._stopping:
                self._children.add(self._spawn())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def stop(self) -> None:
        """Stop accepting at once (our copy of the listener closed, the socket file removed: a replacement daemon
        can bind now), then tell the serving processes, which close theirs and finish what they run."""
        self._stopping = True
        self.daemon.close()
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())
        for _ in range(self.processes):
            self._spawn_blocked()
        log.info("%d serving processes: %s", self.processes, sorted(self._children))
        try:
            while self._children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                self._children.discard(pid)
                if not self._stopping:
                    log.error("serving process %d ended (wait status %d); starting another", pid, status)
                    time.sleep(0.5)  # no tight loop if something kills them on sight
                    self._spawn_blocked()
        finally:
            self.daemon.close()
            log.info("stopped")


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the supervisor dies, so no orphan keeps accepting on a socket nobody owns."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

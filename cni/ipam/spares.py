"""Spare files for the host-local store: empty inodes made after the node daemon's reply, linked in by the next
ADDs as their index and address files instead of creating new ones (see `SparePool`)."""

from __future__ import annotations

import logging
import os
import secrets
import threading

log = logging.getLogger(__name__)

SPARE_PREFIX = ".spare."
SPARES_PER_NETWORK = 4  # what the daemon keeps ready per network: an ADD takes two (index and address file)


class SparePool:
    """Empty files under `by-key/` that this process made after an earlier reply, for the next ADDs to take.

    Creating a file allocates an inode, which can cost more than the rest of an IPAM ADD: ext4 without a journal
    (this project's VMs) steps one by one over every inode freed in the last minutes (find_inode_bit ->
    recently_deleted), 0.05-0.9 ms a file after a few hundred DELs. An ADD makes two files, the key's index and
    the address file. With spares it hard-links an existing empty inode under each new name instead (link(2)
    fails on an existing name, as O_EXCL does) and drops the spare's own name, and the node daemon makes new
    spares after its reply (`cni.deferred`). Elsewhere nothing is made ahead: the process is about to exit.

    A pool belongs to one process (forked serving processes each start their own: two processes linking one
    spare would give two addresses one inode). Spares a killed daemon left are empty files GC removes; one that
    GC removed under a live pool only makes that ADD create its file after all."""

    def __init__(self, path: str, subdir: str) -> None:
        self.path = path
        self.subdir = subdir
        self._names: list[str] = []
        self._lock = threading.Lock()

    def take(self) -> str | None:
        with self._lock:
            return self._names.pop() if self._names else None

    def give_back(self, name: str) -> None:
        with self._lock:
            self._names.append(name)

    def refill(self) -> None:
        """Make spares up to SPARES_PER_NETWORK. Runs outside the lock: the names are this process's own (pid and
        a random part, so a name a dead process of the same pid left is no obstacle)."""
        for _ in range(4 * SPARES_PER_NETWORK):
            with self._lock:
                if len(self._names) >= SPARES_PER_NETWORK:
                    return
            name = f"{self.subdir}/{SPARE_PREFIX}{os.getpid()}.{secrets.token_hex(4)}"
            try:
                fd = os.open(os.path.join(self.path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o644)
            except FileExistsError:
                continue
            except OSError as exc:
                log.debug("no spare file in %s: %s", self.path, exc)
                return
            os.close(fd)
            self.give_back(name)


_pools: dict[tuple[int, str], SparePool] = {}
_pools_guard = threading.Lock()


def spare_pool(path: str, subdir: str) -> SparePool:
    """This process's pool for the network directory `path`; its spares live in `path/subdir`."""
    with _pools_guard:
        return _pools.setdefault((os.getpid(), path), SparePool(path, subdir))

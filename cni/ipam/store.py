"""The host-local reservation store: the reference's on-disk layout plus a per-key index, under one flock.

Layout of `<dataDir>/<network>/` (the first three are exactly what the Go host-local writes and reads, so an
operator finds what they know and either plugin can take over the directory):

- `<ip>`: one file per reserved address, containing `"<containerID>\\r\\n<ifname>"`.
- `last_reserved_ip.<rangeSetIndex>`: where the round-robin allocation resumes.
- `lock`: flocked around every transaction (the reference's go-filemutex takes the same lock).
- `by-key/<containerID>:<ifname>`: our index, one address per line, so ADD's duplicate check and DEL read
  one small file instead of every reservation. `:` cannot occur in a valid container ID or interface name,
  so the name is unambiguous.

- `by-key/.spare.<pid>.<random>`: empty files the node daemon made ahead of time (see `cni.ipam.spares`); not
  reservations.

Crash safety (SIGKILL at any instruction). A reservation is made in this order: append the address to the
key's index, create the address file with O_EXCL, write the owner in one write(2). So every address file
that exists is listed in its key's index, or empty; DEL by key therefore finds everything the key ever
touched. Readers never trust the index alone: an entry counts only if the address file names the same key,
so entries for addresses that were never created, or that another key owns, are ignored. An empty address
file is a reservation that died before its owner was written (also the reference's bug #498): it is free.
Process death is covered; power loss may leave empty files, which are then free as well.

Where the store syncs to disk: nowhere on the ADD/DEL path, on purpose. An fsync per ADD costs milliseconds on
ext4 and would serialise every pod start of the network behind the disk; process death needs none (the page
cache survives it, and the write order above covers it). What power loss or a full disk can do is leave a key's
index empty or cut short while its address files exist. Readers therefore check the index's shape (every line an
address, newline-terminated) and, when it is damaged, find the key's reservations by reading every address file
(O(N), only then): DEL still releases by container and interface, and ADD still sees what the key holds. The
only thing power loss can lose outright is an address file or its owner, which makes that address free, as the
reference plugin's layout already does.
With a spare (`cni.ipam.spares`), "create" is link(2) of an empty file, which fails on an existing name as O_EXCL
does; a death right after it leaves the spare's name on that empty (free) file too, which GC removes.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from cni import deferred
from cni.errors import INTERNAL, TRY_AGAIN, CniError
from cni.ipam.keys import INDEX_DIR, LINE_BREAK, ReservationKey, network_dir, reservation_key
from cni.ipam.spares import SparePool, spare_pool

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_LOCK_TIMEOUT = 10.0
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_FILE = "lock"
_TMP_PREFIX = ".tmp."


def _parse_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address an entry of the network directory reserves, or None for any other file."""
    if not name or not (name[0].isdigit() or name[0] in "abcdefABCDEF:"):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _make_dirs(path: str) -> None:
    """`os.makedirs(path, exist_ok=True)` with every missing level 0755: makedirs gives the levels above the last
    0777 minus the umask, a world-writable dataDir under the umask 0 some init systems and runtimes run with."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path and not os.path.isdir(parent):
        _make_dirs(parent)
    # Exists already: a directory made by a concurrent ADD, or a file, which the open() after us reports.
    with suppress(FileExistsError):
        os.mkdir(path, 0o755)


# One mutex per network directory and process: threads of the node daemon queue here (fairly, without
# polling) and only the winner contends for the flock, which is what excludes other processes.
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(path, threading.Lock())


class ReservationStore:
    """The reservations of one network. Every operation runs inside `transaction()`."""

    def __init__(self, data_dir: str, network: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = network_dir(data_dir, network)
        self.lock_timeout = lock_timeout

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Hold the network's lock (in-process mutex, then flock on `lock`) for the body; code 11 on timeout."""
        try:
            _make_dirs(self.path)
            dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise CniError(INTERNAL, f"failed to open IPAM data directory {self.path}: {exc.strerror}") from None
        try:
            deadline = time.monotonic() + self.lock_timeout
            real_path = os.path.realpath(self.path)
            mutex = _thread_lock(real_path)
            if not mutex.acquire(timeout=self.lock_timeout):
                raise CniError(TRY_AGAIN, f"timed out after {self.lock_timeout:g}s waiting for the IPAM lock of "
                                          f"{self.path}")
            try:
                lock_fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    self._flock(lock_fd, deadline)
                    pool = spare_pool(real_path, INDEX_DIR) if deferred.active() else None
                    txn = Transaction(dfd, self.path, pool)
                    txn.ensure_index()
                    yield txn
                    if pool is not None and txn.spares_used:
                        deferred.later(pool.refill)
                except OSError as exc:  # a full or read-only disk, or a foreign file where ours should be
                    name = f" ({exc.filename})" if exc.filename else ""
                    raise CniError(INTERNAL, f"IPAM store {self.path}: {exc.strerror or exc}{name}") from exc
                finally:
                    os.close(lock_fd)  # closing the last descriptor releases the flock
            finally:
                mutex.release()
        finally:
            os.close(dfd)

    def _flock(self, fd: int, deadline: float) -> None:
        delay = 0.0002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CniError(TRY_AGAIN, f"timed out after {self.lock_timeout:g}s waiting for the IPAM lock "
                                              f"{self.path}/{LOCK_FILE}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.005)


class Transaction:
    """Operations on one network directory while its lock is held. Names are relative to `dfd`."""

    def __init__(self, dfd: int, path: str, spares: SparePool | None = None) -> None:
        self._dfd = dfd
        self.path = path
        self._spares = spares
        self.spares_used = False  # wanted or taken: the pool wants refilling after the reply

    # -- small file primitives -------------------------------------------------------------------------

    def _read(self, name: str) -> str | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dfd)
        except FileNotFoundError:
            return None
        try:
            chunks = []
            while chunk := os.read(fd, 4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
        finally:
            os.close(fd)

    def _write_new(self, name: str, content: str) -> None:
        """Replace `name` atomically: a crash leaves the old or the new content, plus at most a temp file."""
        tmp = f"{INDEX_DIR}/{_TMP_PREFIX}{os.path.basename(name)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=self._dfd)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)

    def _unlink(self, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=self._dfd)
            return True
        except FileNotFoundError:
            return False

    def _from_spare(self, name: str) -> bool | None:
        """Give `name` a spare's empty inode: True if it now exists so, False if `name` existed already (the
        spare stays in the pool), None if no spare could serve (the caller creates the file)."""
        if self._spares is None:
            return None
        self.spares_used = True
        spare = self._spares.take()
        if spare is None:
            return None
        try:
            os.link(spare, name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
        except FileExistsError:
            self._spares.give_back(spare)
            return False
        except OSError as exc:  # removed by GC, or a filesystem that will not link
            log.debug("spare %s/%s not used: %s", self.path, spare, exc)
            return None
        self._unlink(spare)
        return True

    def _owner(self, ip: str) -> str | None:
        """Who holds `ip`: the trimmed owner string, "" for an empty (free) file, None when there is no file."""
        content = self._read(ip)
        return None if content is None else content.strip()

    # -- the index ---------------------------------------------------------------------------------------

    def ensure_index(self) -> None:
        """Build the index once for a directory written by the reference plugin (or by an older vnfio)."""
        try:
            os.stat(INDEX_DIR, dir_fd=self._dfd)
            return
        except FileNotFoundError:
            pass
        import shutil  # only for this one-time migration: keep it off the per-pod import path

        staging = f"{INDEX_DIR}.tmp"
        shutil.rmtree(os.path.join(self.path, staging), ignore_errors=True)
        os.mkdir(staging, 0o755, dir_fd=self._dfd)
        by_key: dict[str, list[str]] = {}
        for ip, owner in self._reservations():
            if LINE_BREAK in owner:
                by_key.setdefault(owner.replace(LINE_BREAK, ":", 1), []).append(ip)
        for name, ips in by_key.items():
            if _is_index_name(name):
                fd = os.open(f"{staging}/{name}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=self._dfd)
                try:
                    os.write(fd, "".join(f"{ip}\n" for ip in ips).encode())
                finally:
                    os.close(fd)
        os.rename(staging, INDEX_DIR, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
        if by_key:
            log.info("indexed %d existing reservations in %s", sum(map(len, by_key.values())), self.path)

    def _index(self, key: ReservationKey) -> list[str]:
        """The addresses `key`'s index lists ([] when it has none). A damaged index (empty, a line cut short, not
        text, unreadable) is not believed: then the key's addresses are found by reading every address file."""
        try:
            content = self._read(key.index_name)
        except OSError as exc:  # EIO, or something that is no file where the index should be
            log.warning("index %s/%s unreadable: %s", self.path, key.index_name, exc.strerror or exc)
            content = ""
        if content is None:
            return []
        lines = content.split("\n")
        if len(lines) > 1 and lines[-1] == "" and all(_parse_address(line) for line in lines[:-1]):
            return lines[:-1]
        log.warning("index %s/%s is damaged (%d characters); finding %s/%s's reservations by their files", self.path,
                    key.index_name, len(content), key.container_id, key.ifname)
        return [ip for ip, owner in self._reservations() if owner == key.owner]

    def owned(self, key: ReservationKey) -> list[str]:
        """The addresses `key` holds, from its index, each confirmed by the address file's owner."""
        return [ip for ip in dict.fromkeys(self._index(key)) if _parse_address(ip) and self._owner(ip) == key.owner]

    # -- reservations -----------------------------------------------------------------------------------

    def try_reserve(self, key: ReservationKey, ip: str) -> bool:
        """Reserve `ip` for `key` if nobody holds it; False when it is taken.

        One stat per taken candidate (no read), so a scan through a nearly full range stays cheap.
        """
        try:
            if os.stat(ip, dir_fd=self._dfd, follow_symlinks=False).st_size:
                return False
            log.info("reclaiming empty reservation file %s/%s", self.path, ip)
            self._unlink(ip)
        except FileNotFoundError:
            pass
        # Index first: from here on, a crash leaves nothing that DEL by key cannot find.
        self._from_spare(key.index_name)  # an index already there (another range's address) stays as it is
        fd = os.open(key.index_name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=self._dfd)
        try:
            os.write(fd, f"{ip}\n".encode())
        finally:
            os.close(fd)
        linked = self._from_spare(ip)
        if linked is False:
            return False  # a writer that ignores the lock; our stale index line is ignored by readers
        try:
            flags = os.O_WRONLY | os.O_CLOEXEC | (0 if linked else os.O_CREAT | os.O_EXCL)
            fd = os.open(ip, flags, 0o644, dir_fd=self._dfd)
        except FileExistsError:
            return False  # as above
        try:
            os.write(fd, key.owner.encode())
        except OSError:
            os.close(fd)
            self._unlink(ip)
            raise
        os.close(fd)
        return True

    def last_reserved(self, range_set_index: int) -> str | None:
        content = self._read(f"{LAST_RESERVED_PREFIX}{range_set_index}")
        return content.strip() if content else None

    def set_last_reserved(self, range_set_index: int, ip: str) -> None:
        """Overwrite in place, then cut to length.

        Not O_TRUNC: ext4 (auto_da_alloc) flushes a file that is truncated to zero and rewritten when it is
        closed, which cost ~4 ms per ADD here. A crash between the two calls can leave a longer, wrong
        address: only the round-robin starting point suffers, every candidate is checked anyway.
        """
        name = f"{LAST_RESERVED_PREFIX}{range_set_index}"
        data = ip.encode()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=self._dfd)
        try:
            os.pwrite(fd, data, 0)
            if os.fstat(fd).st_size > len(data):
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def release(self, key: ReservationKey, only: Iterable[str] | None = None) -> list[str]:
        """Free what `key` holds (or just the addresses in `only`); returns the addresses freed.

        Address files are removed before the index, so a crash half-way leaves an index that a repeated
        DEL finishes. Files that another key owns are left alone even if our index names them.
        """
        listed = list(dict.fromkeys(self._index(key)))
        wanted = None if only is None else set(only)
        targets = listed if wanted is None else [ip for ip in listed if ip in wanted]
        freed = []
        for ip in targets:
            if not _parse_address(ip):
                continue
            owner = self._owner(ip)
            # An empty file in our index is our own reservation that died before its owner was written.
            if owner in (key.owner, "") and self._unlink(ip) and owner:
                freed.append(ip)
        remaining = [] if wanted is None else [ip for ip in listed if ip not in wanted]
        if remaining:
            self._write_new(key.index_name, "".join(f"{ip}\n" for ip in remaining))
        else:
            self._unlink(key.index_name)
        return freed

    def _reservations(self) -> Iterator[tuple[str, str]]:
        """Every address file in the directory and its trimmed owner ("" when empty). O(N): GC and STATUS only."""
        with os.scandir(self.path) as entries:
            for entry in entries:
                if _parse_address(entry.name) and entry.is_file(follow_symlinks=False):
                    owner = self._owner(entry.name)
                    if owner is not None:
                        yield entry.name, owner

    def reserved_addresses(self, *, read_owners: bool = True) -> list[str]:
        """Every held address file, for STATUS. Without `read_owners` only names are listed (no file read),
        so empty (free) files count as held: a cheap upper bound."""
        if read_owners:
            return [ip for ip, owner in self._reservations() if owner]
        with os.scandir(self.path) as entries:
            return [entry.name for entry in entries if _parse_address(entry.name)]

    def collect_garbage(self, valid: set[tuple[str, str]]) -> list[str]:
        """Release every reservation whose key is not in `valid`, then rebuild the index; returns the errors.

        Files in the reference's old format (container ID only) are kept when any valid attachment has
        that container ID, as the reference matches them by ID alone.
        """
        errors: list[str] = []
        valid_ids = {cid for cid, _ in valid}
        by_key: dict[str, list[str]] = {}
        for ip, owner in list(self._reservations()):
            cid, sep, ifname = owner.partition(LINE_BREAK)
            keep = bool(owner) and ((cid, ifname) in valid if sep else cid in valid_ids)
            if keep:
                if sep:
                    by_key.setdefault(f"{cid}:{ifname}", []).append(ip)
                continue
            try:
                self._unlink(ip)
                log.info("gc: released %s held by %r", ip, owner)
            except OSError as exc:
                errors.append(f"failed to release {self.path}/{ip}: {exc.strerror}")
        try:
            with os.scandir(os.path.join(self.path, INDEX_DIR)) as entries:
                names = [entry.name for entry in entries]
        except OSError as exc:
            return [*errors, f"failed to list {self.path}/{INDEX_DIR}: {exc.strerror}"]
        for name in names:
            path = f"{INDEX_DIR}/{name}"
            try:
                wanted = by_key.pop(name, None)
                if wanted is None:
                    self._unlink(path)
                elif self._read(path) != "".join(f"{ip}\n" for ip in wanted):
                    self._write_new(path, "".join(f"{ip}\n" for ip in wanted))
            except OSError as exc:
                errors.append(f"failed to clean index entry {self.path}/{path}: {exc.strerror}")
        for name, ips in by_key.items():  # held but never indexed: written by another plugin
            if _is_index_name(name):
                try:
                    self._write_new(f"{INDEX_DIR}/{name}", "".join(f"{ip}\n" for ip in ips))
                except OSError as exc:
                    errors.append(f"failed to index {self.path}/{INDEX_DIR}/{name}: {exc.strerror}")
        return errors


def _is_index_name(name: str) -> bool:
    """Whether "<id>:<ifname>" names a key we could have written (reference files may hold anything)."""
    cid, sep, ifname = name.partition(":")
    try:
        reservation_key(cid, ifname)
    except CniError:
        return False
    return bool(sep)

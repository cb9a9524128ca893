"""Kernel uevents (NETLINK_KOBJECT_UEVENT) as the trigger for a rescan: bind, unbind, hot-plug and device-node
changes reach the plugin within milliseconds instead of waiting for the periodic rescan.

The listener only says "something relevant changed"; it never decides health itself. What a device looks
like is always read back from sysfs by discovery, so a lost or reordered event costs latency, never
correctness: the periodic rescan stays the safety net.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1  # group 2 carries udev's re-broadcasts (libudev framing); we want the kernel's own
# Group nodes and IOMMU groups change with every VFIO kind, VFIO device cdevs (vfio-dev) and /dev/iommu (misc) with
# vfioInterface cdev/both; each kind adds its bus (DeviceKind.uevent_subsystems).
VFIO_SUBSYSTEMS = frozenset({"vfio", "iommu", "vfio-dev", "misc"})
RELEVANT_ACTIONS = frozenset({"add", "remove", "bind", "unbind", "change", "move"})
DEFAULT_DEBOUNCE = 0.075  # seconds: a VF bind is unbind+bind+add of the group node; one rescan covers all
_RECEIVE_BUFFER = 4 * 1024 * 1024  # bursts of SR-IOV hot-plug (hundreds of VFs) must not overflow the socket
_MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Uevent:
    """One kernel uevent: `ACTION@DEVPATH` followed by KEY=VALUE pairs."""

    action: str
    devpath: str
    subsystem: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def seqnum(self) -> int | None:
        value = self.env.get("SEQNUM", "")
        return int(value) if value.isdigit() else None

    @property
    def driver(self) -> str | None:
        return self.env.get("DRIVER")

    @property
    def synth_uuid(self) -> str | None:
        """The UUID written along with a synthetic event (`echo "change UUID" > …/uevent`), if any."""
        return self.env.get("SYNTH_UUID")


UeventCallback = Callable[[tuple[Uevent, ...]], Awaitable[None] | None]


def parse_uevent(data: bytes) -> Uevent | None:
    """Parse a kernel uevent datagram; None for anything else (udev's `libudev` framing, garbage)."""
    parts = data.split(b"\0")
    header = parts[0].decode("utf-8", "replace")
    action, sep, devpath = header.partition("@")
    if not sep or not action or not devpath.startswith("/"):
        return None
    env: dict[str, str] = {}
    for raw in parts[1:]:
        key, eq, value = raw.decode("utf-8", "replace").partition("=")
        if eq and key:
            env[key] = value
    # The header is authoritative; ACTION/DEVPATH in the body only repeat it on every kernel we know.
    return Uevent(action=action, devpath=devpath, subsystem=env.get("SUBSYSTEM"), env=env)


def open_uevent_socket() -> socket.socket:
    """A non-blocking netlink socket subscribed to the kernel's uevent multicast group."""
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT
    )
    try:
        try:
            # RCVBUFFORCE lifts the rmem_max cap when we have CAP_NET_ADMIN; plain RCVBUF is the fallback.
            sock.setsockopt(socket.SOL_SOCKET, 33, _RECEIVE_BUFFER)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.bind((0, KERNEL_GROUP))
    except BaseException:
        sock.close()
        raise
    return sock


def relevant_subsystems() -> frozenset[str]:
    """The subsystems whose uevents can change what discovery finds: VFIO's and every registered kind's bus."""
    from deviceplugin.kinds import KINDS  # the registry knows the kinds; this module names none of them

    return VFIO_SUBSYSTEMS.union(*(kind.uevent_subsystems for kind in KINDS.values()))


class UeventListener:
    """Listens to kernel uevents and calls `on_change(events)` once per burst of relevant ones.

    A burst is every relevant event that arrives within `debounce` seconds of the first one; events already
    queued on the socket when the listener wakes always land in the same burst. After a receive-buffer
    overflow (ENOBUFS: events were lost) `on_change(())` is called, meaning "unknown change, rescan".
    """

    def __init__(
        self,
        on_change: UeventCallback,
        *,
        subsystems: Collection[str] | None = None,
        actions: Collection[str] = RELEVANT_ACTIONS,
        debounce: float = DEFAULT_DEBOUNCE,
        open_socket: Callable[[], socket.socket] = open_uevent_socket,
    ) -> None:
        self._on_change = on_change
        self._subsystems = frozenset(subsystems if subsystems is not None else relevant_subsystems())
        self._actions = frozenset(actions)
        self._debounce = debounce
        self._open_socket = open_socket
        self._pending: list[Uevent] = []
        self._overflowed = False
        self._wakeup: asyncio.Event | None = None
        self.listening = asyncio.Event()  # set once the socket is bound: events from then on are seen

    def relevant(self, event: Uevent) -> bool:
        return event.action in self._actions and event.subsystem in self._subsystems

    async def run(self) -> None:
        """Listen until cancelled. Returns at once (after logging why) when the socket cannot be opened:
        without uevents the periodic rescan still finds every change, only later."""
        try:
            sock = self._open_socket()
        except OSError as exc:
            log.warning(
                "kernel uevents unavailable (%s); relying on the periodic rescan alone", exc, extra={"errno": exc.errno}
            )
            return
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        loop.add_reader(sock.fileno(), self._drain, sock)
        self.listening.set()
        log.info("listening to kernel uevents", extra={"subsystems": sorted(self._subsystems)})
        try:
            while True:
                await self._wakeup.wait()
                await asyncio.sleep(self._debounce)
                self._wakeup.clear()
                events, self._pending = tuple(self._pending), []
                overflowed, self._overflowed = self._overflowed, False
                if events or overflowed:
                    await self._deliver(events)
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            self.listening.clear()

    def _drain(self, sock: socket.socket) -> None:
        """Read every queued datagram (reader callback): a burst already on the socket becomes one batch."""
        while True:
            try:
                data, sender = sock.recvfrom(_MAX_MESSAGE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("reading a uevent failed: %s", exc)
                    break
                log.warning("uevent receive buffer overflowed: events were lost; rescanning")
                self._overflowed = True
                continue
            # Only the kernel (port id 0) sends real uevents; any local process can unicast to our socket.
            if sock.family == socket.AF_NETLINK and sender and sender[0] != 0:
                continue
            event = parse_uevent(data)
            if event is not None and self.relevant(event):
                log.debug("uevent %s %s", event.action, event.devpath, extra={"subsystem": event.subsystem})
                self._pending.append(event)
        if (self._pending or self._overflowed) and self._wakeup is not None:
            self._wakeup.set()

    async def _deliver(self, events: tuple[Uevent, ...]) -> None:
        try:
            result = self._on_change(events)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # A failing rescan must not end the listener: the next event (or the timer) tries again.
            log.exception("handling %d uevent(s) failed", len(events))

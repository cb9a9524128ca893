"""Kernel uevents: a real uevent from the kernel reaches the listener and triggers one callback per burst."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from deviceplugin.discovery.uevents import Uevent, UeventListener, parse_uevent

LO_UEVENT = Path("/sys/class/net/lo/uevent")

KERNEL_UNBIND = (
    b"unbind@/devices/pci0000:00/0000:00:03.0\0ACTION=unbind\0DEVPATH=/devices/pci0000:00/0000:00:03.0\0"
    b"SUBSYSTEM=pci\0PCI_SLOT_NAME=0000:00:03.0\0SEQNUM=4711\0"
)


def test_parse_kernel_message() -> None:
    event = parse_uevent(KERNEL_UNBIND)
    assert event == Uevent("unbind", "/devices/pci0000:00/0000:00:03.0", "pci")
    assert event.env["PCI_SLOT_NAME"] == "0000:00:03.0"
    assert event.seqnum == 4711
    assert event.driver is None


def test_parse_bind_carries_driver() -> None:
    event = parse_uevent(b"bind@/devices/x/dprc.2\0ACTION=bind\0SUBSYSTEM=fsl-mc\0DRIVER=vfio-fsl-mc\0")
    assert event is not None
    assert (event.action, event.subsystem, event.driver) == ("bind", "fsl-mc", "vfio-fsl-mc")


@pytest.mark.parametrize(
    "data",
    [
        b"libudev\0\xfe\xed\xca\xfe" + b"\0" * 32,  # udev's re-broadcast framing
        b"",
        b"change\0SUBSYSTEM=pci\0",  # no @devpath
        b"@/devices/x\0",  # no action
        b"add@relative/path\0",
    ],
)
def test_parse_rejects_non_kernel_messages(data: bytes) -> None:
    assert parse_uevent(data) is None


def test_relevance_filter() -> None:
    listener = UeventListener(lambda events: None)
    assert listener.relevant(Uevent("unbind", "/devices/a", "pci"))
    assert listener.relevant(Uevent("add", "/devices/virtual/vfio/22", "vfio"))
    assert listener.relevant(Uevent("bind", "/devices/platform/x/dprc.2", "fsl-mc"))
    # Every registered kind's bus is listened to: SoC devices (platform, amba) and the misc nodes of vhost-net.
    assert listener.relevant(Uevent("bind", "/devices/platform/soc/3200000.sata", "platform"))
    assert listener.relevant(Uevent("unbind", "/devices/platform/soc/21c0000.serial", "amba"))
    assert listener.relevant(Uevent("add", "/devices/virtual/misc/vhost-net", "misc"))
    assert not listener.relevant(Uevent("change", "/devices/virtual/net/lo", "net"))
    assert not listener.relevant(Uevent("offline", "/devices/a", "pci"))
    assert not listener.relevant(Uevent("add", "/devices/a", None))


async def _run_until(listener: UeventListener, done: asyncio.Event, act: Callable[[], object] | None = None) -> None:
    """Run the listener until `done`: `act()` once it listens, or nothing more (events already queued)."""
    task = asyncio.create_task(listener.run())
    try:
        if act is not None:
            await asyncio.wait_for(listener.listening.wait(), 5)
            act()
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_real_kernel_uevent_triggers_callback() -> None:
    """Writing `change UUID` to a device's uevent file makes the kernel broadcast a synthetic uevent
    tagged with that UUID; the listener (filter widened to `net`) delivers exactly that event."""
    marker = str(uuid.uuid4())
    seen: list[Uevent] = []
    done = asyncio.Event()

    async def on_change(events: tuple[Uevent, ...]) -> None:
        seen.extend(events)
        if any(e.synth_uuid == marker for e in events):
            done.set()

    listener = UeventListener(on_change, subsystems={"net"}, actions={"change"})
    asyncio.run(_run_until(listener, done, lambda: LO_UEVENT.write_text(f"change {marker}")))
    ours = [e for e in seen if e.synth_uuid == marker]
    assert len(ours) == 1
    assert (ours[0].action, ours[0].devpath, ours[0].subsystem) == ("change", "/devices/virtual/net/lo", "net")
    assert ours[0].env["INTERFACE"] == "lo"
    # Only what the filter lets through is delivered.
    assert all(e.subsystem == "net" and e.action == "change" for e in seen)


def test_real_uevents_outside_filter_are_ignored() -> None:
    """With the default filter (pci, fsl-mc, vfio, iommu) a `net` event never reaches the callback; a
    relevant event injected afterwards on the same socket shows the listener was awake all along."""
    marker = str(uuid.uuid4())
    seen: list[Uevent] = []
    done = asyncio.Event()
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def on_change(events: tuple[Uevent, ...]) -> None:
        seen.extend(events)
        done.set()

    def act() -> None:
        left.send(f"change@/devices/virtual/net/lo\0SUBSYSTEM=net\0SYNTH_UUID={marker}\0".encode())
        left.send(KERNEL_UNBIND)

    right.setblocking(False)
    listener = UeventListener(on_change, open_socket=lambda: right)
    try:
        asyncio.run(_run_until(listener, done, act))
    finally:
        left.close()
    assert [e.action for e in seen] == ["unbind"]


def test_queued_burst_is_one_callback() -> None:
    """Five events already queued when the listener wakes are delivered in one call (one rescan)."""
    calls: list[tuple[Uevent, ...]] = []
    done = asyncio.Event()
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    right.setblocking(False)

    def on_change(events: tuple[Uevent, ...]) -> None:
        calls.append(events)
        done.set()

    # Queue before the listener starts reading, as a burst of unbind/bind/add does in the kernel.
    for i in range(5):
        left.send(f"bind@/devices/pci/0000:00:0{i}.0\0SUBSYSTEM=pci\0DRIVER=vfio-pci\0SEQNUM={i}\0".encode())
    try:
        asyncio.run(_run_until(UeventListener(on_change, open_socket=lambda: right), done))
    finally:
        left.close()
    assert len(calls) == 1
    assert [e.seqnum for e in calls[0]] == [0, 1, 2, 3, 4]


def test_failing_callback_does_not_stop_listener() -> None:
    calls: list[int] = []
    done = asyncio.Event()
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    right.setblocking(False)

    def on_change(events: tuple[Uevent, ...]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            left.send(KERNEL_UNBIND)  # the second burst, sent while the first is being handled
            raise RuntimeError("rescan exploded")
        done.set()

    left.send(KERNEL_UNBIND)
    try:
        asyncio.run(_run_until(UeventListener(on_change, open_socket=lambda: right), done))
    finally:
        left.close()
    assert calls == [1, 1]


def test_unavailable_socket_returns_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def refuse() -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    listener = UeventListener(lambda events: None, open_socket=refuse)
    asyncio.run(asyncio.wait_for(listener.run(), 5))
    assert "relying on the periodic rescan" in caplog.text
    assert not listener.listening.is_set()

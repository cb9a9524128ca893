"""Shared helpers for CNI tests: run the plugin, make unique network namespaces, ping, and check for debris.

Everything created here carries a per-run random suffix so tests of several engineers can run side by side.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cni import client

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the installed console scripts: vnfio (the Python one), vnfio-cni-daemon
CNI_BIN = REPO / "build" / "cni-bin"  # what `make cni-bin` writes
VNFIO = CNI_BIN / "vnfio"  # the node's executable: the static forwarder, vnfio-inproc beside it as the fallback
# The executables a runtime may exec, for tests that hold for both: the static one, and the Python start-up path.
EXECUTABLES = {"static": VNFIO, "python": BIN / "vnfio"}
REFERENCE_DIR = Path("/usr/lib/cni")
T = TypeVar("T")
N = TypeVar("N", ipaddress.IPv4Network, ipaddress.IPv6Network)


def suffix() -> str:
    """A short random tag for names: link names must stay within 15 bytes."""
    return secrets.token_hex(3)


_HANDED_OUT: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()


def _fresh(make: Callable[[], N]) -> N:
    """A network not handed out before in this run: two tests (or one test's two subnets) never overlap."""
    while True:
        net = make()
        if not any(net.overlaps(old) for old in _HANDED_OUT if old.version == net.version):
            _HANDED_OUT.add(net)
            return net


def random_subnet(prefix: int = 24) -> ipaddress.IPv4Network:
    """A random 10.x.y.0/prefix, distinct from every other one this run; other runs are harmless inside our netns."""

    def make() -> ipaddress.IPv4Network:
        base = ipaddress.ip_address(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0")
        return ipaddress.ip_network(f"{base}/{prefix}", strict=False)  # aligned down for prefixes shorter than /24

    return _fresh(make)


def random_subnet6() -> ipaddress.IPv6Network:
    return _fresh(
        lambda: ipaddress.ip_network(f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64")
    )


def build_cni_bin() -> Path:
    """`make cni-bin` with this interpreter (a no-op when up to date), so `python -m pytest` alone finds the static
    executable and its fallback beside it, built from the sources under test; the directory."""
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "cni-bin", f"CNI_PY={sys.executable}",
                           "CNI_DEPS="], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"make cni-bin failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return CNI_BIN


# --- network namespaces ----------------------------------------------------------------------------------------


@dataclass
class Netns:
    """A named netns under /run/netns, deleted by `close()` (idempotent)."""

    name: str = field(default_factory=lambda: f"vnfio-t-{os.getpid()}-{suffix()}")

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def create(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self

    def close(self) -> None:
        if os.path.exists(self.path):
            subprocess.run(["ip", "netns", "del", self.name], check=False)

    def run(self, func: Callable[[], T]) -> T:
        """Run `func` in a thread that has entered this netns."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return in_netns_fd(fd, func)
        finally:
            os.close(fd)

    def links(self) -> dict[str, dict[str, Any]]:
        return {link["ifname"]: link for link in json.loads(self.ip("-j", "-d", "link", "show").stdout)}

    def addresses(self, ifname: str) -> set[str]:
        data = json.loads(self.ip("-j", "addr", "show", "dev", ifname).stdout)
        return {f"{a['local']}/{a['prefixlen']}" for entry in data for a in entry.get("addr_info", [])}

    def routes(self, family: str = "-4") -> list[dict[str, Any]]:
        return json.loads(self.ip("-j", family, "route", "show").stdout)

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    ns = Netns().create()
    try:
        yield ns
    finally:
        ns.close()


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns_fd(fd: int, func: Callable[[], T]) -> T:
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            if _libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- ping through a raw ICMP socket (there is no ping binary on these machines) ----------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping_once(target: str, timeout: float) -> bool:
    addr = ipaddress.ip_address(target)
    ident = random.randint(1, 0xFFFF)
    if addr.version == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        payload = b"vnfio-ping"
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
        reply_type, offset = 0, 20
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        packet = struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"vnfio-ping"  # the kernel fills the checksum
        reply_type, offset = 129, 0
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (target, 0))
        except OSError:  # no route, for instance: unreachable
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                return False
            icmp = data[offset:]
            if len(icmp) >= 8 and icmp[0] == reply_type and struct.unpack("!H", icmp[4:6])[0] == ident:
                return ipaddress.ip_address(source[0]) == addr
    return False


def ping(ns: Netns, target: str, attempts: int = 3, timeout: float = 1.0) -> bool:
    """Echo `target` from inside `ns`; a few attempts allow for neighbour resolution and DAD right after ADD."""
    return ns.run(lambda: any(_ping_once(target, timeout) for _ in range(attempts)))


# --- running the plugin -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str

    @property
    def json(self) -> Any:
        return json.loads(self.out) if self.out.strip() else None

    @property
    def error_code(self) -> int | None:
        data = self.json
        return data.get("code") if self.code and isinstance(data, dict) else None


def cni_env(
    command: str,
    container_id: str = "",
    netns_path: str = "",
    ifname: str = "eth0",
    args: str = "",
    path: str = "/usr/lib/cni",
) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_PATH": path}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns_path:
        env["CNI_NETNS"] = netns_path
    if ifname:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    return env


def run_vnfio(env: Mapping[str, str], conf: Mapping[str, Any] | bytes, in_process: bool = True) -> Outcome:
    """Run vnfio: in-process through `cni.skel.execute`, or as the node's static `vnfio` in a subprocess with no
    daemon at its socket (so it hands the request to `vnfio-inproc`, the Python fallback beside it)."""
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    if in_process:
        from cni.skel import execute

        code, out = execute(dict(env), stdin)
        return Outcome(code, out)
    proc = subprocess.run(
        [str(VNFIO)],
        input=stdin,
        env={**env, "PATH": os.environ.get("PATH", ""), client.SOCKET_ENV: "/nonexistent/vnfio-cni.sock"},
        capture_output=True,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout.decode())


def run_reference(plugin: str, env: Mapping[str, str], conf: Mapping[str, Any]) -> Outcome:
    """Run one of Debian's reference plugins from /usr/lib/cni with the same env and config."""
    proc = subprocess.run(
        [str(REFERENCE_DIR / plugin)],
        input=json.dumps(conf).encode(),
        env={**env, "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout.decode())


# --- the node daemon ---------------------------------------------------------------------------------------------


def socket_answers(path: Path) -> bool:
    """Whether something listens on the unix socket `path` (a stale or absent socket refuses the connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class CniDaemonProcess:
    """A real `vnfio-cni-daemon` process for one test: started, stopped, killed and restarted at will.

    It runs in its own process group (so `kill()` takes the supervisor and every serving process at once, the way
    an OOM kill or a node fault would), under a fixed umask, logging to a file the test can read while it runs and
    after it is gone. The socket defaults to `<private dir>/run/cni.sock`: the private dir is a short mkdtemp, as a
    unix socket path must fit in 108 bytes (pytest's tmp_path may not), and `run/` is made by the daemon itself.
    As a context manager it starts on entry and, on exit, stops, kills whatever is left and removes the private dir.
    """

    def __init__(self, socket_path: Path | None = None, *, log_path: Path | None = None, processes: int = 2,
                 workers: int = 8, umask: int = 0o022, log_level: str | None = None,
                 extra_args: Sequence[str] = (), wrapper: Sequence[str] = ()) -> None:
        """`extra_args` go after the daemon's own; `wrapper` before it (e.g. `unshare --mount ...`, which must exec
        the daemon so the process is the daemon)."""
        self.extra_args, self.wrapper = tuple(extra_args), tuple(wrapper)
        self.dir = Path(tempfile.mkdtemp(prefix="vnfio-h-"))
        self.socket = socket_path or self.dir / "run" / "cni.sock"
        self.log_path = log_path or self.dir / "daemon.log"
        self.processes, self.workers, self.umask, self.log_level = processes, workers, umask, log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._last_log = ""  # the log as it was when close() removed the private dir (if it lived there)

    def __enter__(self) -> CniDaemonProcess:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 60) -> CniDaemonProcess:
        """Start the daemon and return once its socket answers; fail with the log's tail if it exits first."""
        assert self.proc is None or self.proc.poll() is not None, "the daemon is already running"
        argv = [str(BIN / "vnfio-cni-daemon"), "--socket", str(self.socket), "--workers", str(self.workers),
                "--processes", str(self.processes)]
        if self.log_level:
            argv += ["--log-level", self.log_level]
        argv = [*self.wrapper, *argv, *self.extra_args]
        with open(self.log_path, "ab") as log:  # appended: a restarted daemon's log follows its predecessor's
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True, umask=self.umask)
        deadline = time.monotonic() + timeout
        while not socket_answers(self.socket):
            if self.proc.poll() is not None:
                raise AssertionError(f"vnfio-cni-daemon exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"vnfio-cni-daemon did not listen within {timeout} s: {self.log_text()[-2000:]}")
            time.sleep(0.01)
        return self

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send `signum` to the supervisor only (its serving processes follow it by PDEATHSIG, or stop with it on
        SIGTERM) and return its exit status; None if it never ran. If it outlives `timeout`, its whole group is
        SIGKILLed and the test fails: a daemon that ignores SIGTERM is a bug, and it is never left behind."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"vnfio-cni-daemon did not exit within {timeout} s of signal {signum}") from None

    def kill(self) -> None:
        """SIGKILL the daemon's whole process group, the way an OOM kill or a node fault would end it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def restart(self) -> CniDaemonProcess:
        """Kill the whole group and start again on the same socket (the new daemon must replace the dead one)."""
        self.kill()
        return self.start()

    def close(self) -> None:
        """Stop (SIGTERM, bounded), then SIGKILL any serving process that outlived its supervisor; remove the
        private dir, keeping the log's text for `log_text()`."""
        try:
            self.stop()
        finally:
            if self.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group outlives its leader while members remain
            self._last_log = self.log_text()
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        """Everything the daemon (and its predecessors on this object) logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else self._last_log

    def run(self, env: Mapping[str, str], conf: Mapping[str, Any] | bytes, timeout: float = 60) -> Outcome:
        """Exec the node's static `vnfio` like a runtime, pointed at this daemon; it must not crash with a traceback."""
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run([str(VNFIO)], input=stdin, capture_output=True, check=False, timeout=timeout,
                              env={**env, "PATH": os.environ.get("PATH", ""), client.SOCKET_ENV: str(self.socket)})
        assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
        return Outcome(proc.returncode, proc.stdout.decode())


# --- debris ------------------------------------------------------------------------------------------------------


def host_links_with(names: set[str]) -> set[str]:
    """Which of `names` exist as links in the host netns."""
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
    return {link["ifname"] for link in links} & names


def host_mentions(text: str) -> list[str]:
    """Host addresses and routes whose text mentions `text` (e.g. a test subnet's prefix), for debris checks."""
    addrs = subprocess.run(["ip", "addr", "show"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    routes6 = subprocess.run(["ip", "-6", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    return [line for line in (addrs + routes + routes6).splitlines() if text in line]


def reservation_files(data_dir: Path) -> list[Path]:
    """IP reservations held under a host-local `dataDir`: the files named after an address (the on-disk format
    the reference defined). Locks, `last_reserved_ip.*` and index entries are bookkeeping: an index entry
    without its address file holds nothing."""
    if not data_dir.exists():
        return []
    found = []
    for p in data_dir.rglob("*"):
        try:
            ipaddress.ip_address(p.name)
        except ValueError:
            continue
        if p.is_file():
            found.append(p)
    return found


# --- one test's world --------------------------------------------------------------------------------------------


class Scenario:
    """The namespaces, host links and IPAM dataDir of one test, all removed by `close()` even after a failure."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "ipam"
        self.tag = suffix()
        self._namespaces: list[Netns] = []
        self._host_links: list[str] = []

    def netns(self) -> Netns:
        ns = Netns().create()
        self._namespaces.append(ns)
        return ns

    def link_name(self, prefix: str) -> str:
        """A unique host link name (≤ 15 bytes) that `close()` deletes if it still exists.

        The last two hex digits count this scenario's links, so two names asked for in one test never collide (a
        random byte there did, one run in 256 for a veth pair).
        """
        name = f"{prefix[:6]}{self.tag}{len(self._host_links) % 256:02x}"
        self._host_links.append(name)
        return name

    def veth_pair(self, prefix: str = "vt") -> tuple[str, str]:
        """A host veth pair, both ends up (a macvlan master needs a carrier)."""
        a, b = self.link_name(prefix), self.link_name(prefix)
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
        for end in (a, b):
            subprocess.run(["ip", "link", "set", end, "up"], check=True)
        return a, b

    def host_local(self, *subnets: str, **extra: Any) -> dict[str, Any]:
        """A host-local `ipam` section with one range set per subnet, storing under this test's dataDir."""
        return {
            "type": "host-local",
            "dataDir": str(self.data_dir),
            "ranges": [[{"subnet": s}] for s in subnets],
            **extra,
        }

    def mode_conf(self, mode: str, *subnets: str, gateway: bool = False, **extra: Any) -> dict[str, Any]:
        """A vnfio attachment config for `mode` on this test's own links, `extra` keys added last.

        Mode bridge gets a bridge of its own (and `isGateway` with `gateway`); mode macvlan gets a host veth end
        with carrier as its master (this kernel has no dummy driver), in `macvlanMode` bridge. Host-local IPAM over
        `subnets`, one range set each, when any are given."""
        conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": f"n{self.tag}", "type": "vnfio", "mode": mode}
        if subnets:
            conf["ipam"] = self.host_local(*subnets)
        if mode == "bridge":
            conf["bridge"] = self.link_name("br")
            if gateway:
                conf["isGateway"] = True
        elif mode == "macvlan":
            conf.update(master=self.veth_pair("mv")[0], macvlanMode="bridge")
        conf.update(extra)
        return conf

    def close(self) -> None:
        for name in self._host_links:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        for ns in self._namespaces:
            ns.close()


C = TypeVar("C", bound=Sized)


def settled(probe: Callable[[], C], timeout: float = 10.0) -> C:
    """`probe()` once it comes back empty, or its last answer after `timeout` seconds.

    A DEL through the node daemon answers first and deletes the pod's link right after
    (cni.modes.retire.remove_pod_link), so what it leaves is checked as "gone within a bounded time", not "gone at
    the answer"; the in-process path, which deletes before answering, has its own immediate checks
    (tests/cni/test_cni_del_deferred.py)."""
    deadline = time.monotonic() + timeout
    while (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def assert_no_debris(scenario: Scenario, host_names: set[str] = frozenset(), subnet: str = "") -> None:
    """Nothing a failed or deleted attachment could leave: no IPAM reservation; and, when the caller names them,
    none of `host_names` among the host links and nothing mentioning `subnet` among the host's addresses and
    routes (both within a bounded wait, see `settled`). Without those arguments only reservations are checked."""
    assert settled(lambda: host_links_with(set(host_names))) == set(), "host links left behind"
    if subnet:
        assert settled(lambda: host_mentions(subnet)) == [], "host addresses or routes left behind"
    assert reservation_files(scenario.data_dir) == [], "IPAM reservations left behind"


def subnet_text(net: ipaddress.IPv4Network) -> str:
    """The text every address of an IPv4 /24 (or smaller) test subnet starts with, e.g. "10.77.3."."""
    return str(net.network_address).rsplit(".", 1)[0] + "."


def pod_links(pod: Netns) -> list[str]:
    """The pod's link names from procfs, read by a thread inside it (cheaper than `ip` or a netlink dump)."""
    def read() -> list[str]:
        with open("/proc/thread-self/net/dev") as f:
            return [line.split(":")[0].strip() for line in list(f)[2:]]
    return pod.run(read)


def held_locks(data_dir: Path) -> list[Path]:
    """IPAM lock files somebody holds: a lock a dead process kept would stall every later ADD of the network."""
    held = []
    for lock in data_dir.glob("*/lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(lock)
        finally:
            os.close(fd)
    return held


# --- a delegated IPAM plugin that holds its worker ------------------------------------------------------------------


@dataclass(frozen=True)
class GatedIpam:
    """A delegated IPAM plugin (`ipam.type` = `name`, found in `cni_path`) that, on any command, marks that it runs
    and then waits until the test opens the gate: a worker held for exactly as long as the test wants, no sleeps."""

    cni_path: Path
    name: str = "gatedipam"

    @property
    def gate(self) -> Path:
        return self.cni_path / "gate"

    def running(self) -> int:
        """How many invocations have started (and, unless the gate is open, still wait)."""
        return len(list(self.cni_path.glob("started.*")))

    def open(self) -> None:
        self.gate.touch()


def gated_ipam(directory: Path) -> GatedIpam:
    directory.mkdir(parents=True, exist_ok=True)
    plugin = GatedIpam(directory)
    script = directory / plugin.name
    script.write_text(f"""#!/bin/sh
touch "{directory}/started.$$"
while [ ! -e "{plugin.gate}" ]; do sleep 0.02; done
cat >/dev/null
exit 0
""")
    script.chmod(0o755)
    return plugin


def wait_until(probe: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether `probe()` came true within `timeout` seconds (polled): for waiting on a scenario's state."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

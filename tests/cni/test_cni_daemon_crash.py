"""Crash consistency: SIGKILL at random moments of an ADD, then the runtime's DEL leaves nothing behind.

Two victims, 100 kills each: the plugin doing the work itself (the in-process fallback), and the node daemon
doing it for a thin client. Kill moments are drawn uniformly over a calibrated ADD duration, so they land before,
inside and after each step (veth creation, bridge port, IPAM reservation, addresses, routes). After every kill,
a DEL for that container (through a restarted daemon where the daemon was killed) must succeed and leave no link
in the pod or on the bridge, no reservation, and no IPAM lock held; every tenth kill, a fresh ADD must succeed.

Most kills hit warm processes forked from this one (the same `cni.skel.execute` and `CniDaemon` code, without
paying an interpreter start per kill); ten of each kind hit the installed `vnfio` and `vnfio-cni-daemon`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    VNFIO,
    CniDaemonProcess,
    Netns,
    Scenario,
    cni_env,
    held_locks,
    pod_links,
    random_subnet,
    reservation_files,
    settled,
)

from cni import client
from cni.daemon import CniDaemon
from cni.skel import execute

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

WARM_KILLS = 90
REAL_KILLS = 10
FRESH_ADD_EVERY = 10
MODES = ("bridge", "bridge", "veth", "macvlan")
KILLS: Counter[str] = Counter()


@dataclass
class CrashWorld:
    """A few pods reused in turn, one bridge, one macvlan master, one IPAM network (one lock)."""

    scenario: Scenario
    pods: list[Netns]
    bridge: str
    master: str
    subnet: str

    def conf(self, mode: str) -> dict[str, Any]:
        conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": f"k{self.scenario.tag}", "type": "vnfio", "mode": mode,
                                "ipam": self.scenario.host_local(self.subnet)}
        if mode == "bridge":
            conf.update(bridge=self.bridge, isGateway=True)
        if mode == "macvlan":
            conf.update(master=self.master)
        return conf

    def attachment(self, n: int) -> tuple[dict[str, str], bytes]:
        """The env and config of the n-th attachment: its own container ID, a pod and a mode in turn."""
        env = cni_env("ADD", f"k{self.scenario.tag}-{n}", self.pods[n % len(self.pods)].path)
        return env, json.dumps(self.conf(MODES[n % len(MODES)])).encode()

    def leftovers(self) -> list[str]:
        found = [f"pod {pod.name} link {name}" for pod in self.pods for name in pod_links(pod) if name != "lo"]
        with contextlib.suppress(FileNotFoundError):
            found += [f"bridge port {port}" for port in os.listdir(f"/sys/class/net/{self.bridge}/brif")]
        found += [f"reservation {path}" for path in reservation_files(self.scenario.data_dir)]
        found += [f"lock held: {lock}" for lock in held_locks(self.scenario.data_dir)]
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashWorld]:
    scenario = Scenario(tmp_path_factory.mktemp("crash"))
    try:
        master, _ = scenario.veth_pair("km")
        yield CrashWorld(scenario=scenario, pods=[scenario.netns() for _ in range(4)],
                         bridge=scenario.link_name("kb"), master=master,
                         subnet=str(ipaddress.ip_network(f"{random_subnet().network_address}/22", strict=False)))
    finally:
        scenario.close()


def _forked(work: Callable[[], int | None]) -> int:
    """A child of this (warm) process that does `work` and exits with what it returns (an exception: 99), without
    ever returning into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = work() or 0
        finally:
            os._exit(code)
    return pid


def _kill_after(pid: int, delay: float) -> bool:
    """SIGKILL `pid` after `delay` seconds; whether it was still at work when the signal came. One that finished
    first must have succeeded."""
    time.sleep(delay)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        assert os.waitstatus_to_exitcode(status) == 0, "an ADD that was not killed failed"
        return False
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return True


def _calibrate(run: Callable[[int], float], first: int) -> float:
    """Median wall time of three complete ADDs (each deleted again): the first span kill moments are drawn from."""
    return statistics.median(run(first + n) for n in range(3))


def _calibrate_exec(world: CrashWorld, run: Callable[[dict[str, str], bytes], tuple[int, str]],
                    delete: Callable[[dict[str, str], bytes], tuple[int, str]], first: int) -> float:
    """`_calibrate` for ADDs through the installed executable (`run`), each deleted through `delete`."""
    def timed_add(n: int) -> float:
        env, stdin = world.attachment(n)
        started = time.perf_counter()
        assert run(env, stdin)[0] == 0
        elapsed = time.perf_counter() - started
        _clean_up_and_check(world, n, delete)
        return elapsed

    return _calibrate(timed_add, first)


def _start_add(world: CrashWorld, n: int, socket_path: Path, stdout: int) -> subprocess.Popen[bytes]:
    """The installed `vnfio` running attachment `n`'s ADD against `socket_path`, stdin already sent: to be killed."""
    env, stdin = world.attachment(n)
    proc = subprocess.Popen([str(VNFIO)], stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.DEVNULL,
                            env={**env, "PATH": os.environ.get("PATH", ""), client.SOCKET_ENV: str(socket_path)})
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    return proc


class KillMoments:
    """Kill delays drawn uniformly from [0, span]. The span follows the ADD's duration under the machine's current
    load: it shrinks when the ADD was already done at the kill and grows when the kill landed inside, settling where
    about two kills in three land inside, so the moments cover the whole ADD (and a little after it)."""

    def __init__(self, span: float) -> None:
        self.span = span

    def draw(self) -> float:
        return random.uniform(0, self.span)

    def landed(self, inside: bool) -> bool:
        self.span *= 1.05 if inside else 0.9
        return inside


def _clean_up_and_check(world: CrashWorld, n: int, delete: Callable[[dict[str, str], bytes], tuple[int, str]]) -> None:
    env, stdin = world.attachment(n)
    code, out = delete({**env, "CNI_COMMAND": "DEL"}, stdin)
    assert code == 0, f"DEL after a killed ADD failed: {out}"
    assert settled(world.leftovers) == [], f"after the kill of ADD {n} and its DEL"


def _fresh_add(world: CrashWorld, n: int, run: Callable[[dict[str, str], bytes], tuple[int, str]]) -> None:
    """No stale lock or half state stands in the way: a new ADD succeeds, then is deleted."""
    env, stdin = world.attachment(n)
    code, out = run(env, stdin)
    assert code == 0, f"an ADD after the kills failed: {out}"
    code, out = run({**env, "CNI_COMMAND": "DEL"}, stdin)
    assert code == 0, out
    assert settled(world.leftovers) == []


def _in_process(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    return execute(env, stdin)


def _exec(socket_path: Path) -> Callable[[dict[str, str], bytes], tuple[int, str]]:
    def run(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
        proc = subprocess.run([str(VNFIO)], input=stdin, capture_output=True, check=False, timeout=60,
                              env={**env, "PATH": os.environ.get("PATH", ""), client.SOCKET_ENV: str(socket_path)})
        assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
        return proc.returncode, proc.stdout.decode()
    return run


def _report(what: str) -> None:
    sys.__stderr__.write(f"crash {what}: {KILLS[what]} SIGKILLs during ADD, each followed by a clean DEL\n")


# --- the plugin doing the work itself -------------------------------------------------------------------------


def test_the_plugin_killed_during_add_then_del_leaves_nothing(world: CrashWorld) -> None:
    def timed_add(n: int) -> float:
        env, stdin = world.attachment(n)
        started = time.perf_counter()
        assert execute(env, stdin)[0] == 0
        elapsed = time.perf_counter() - started
        _clean_up_and_check(world, n, _in_process)
        return elapsed

    moments = KillMoments(_calibrate(timed_add, 0) * 1.3)
    n = 3
    while KILLS["plugin"] < WARM_KILLS:
        assert n < 3 * WARM_KILLS, "the ADDs finish before the kills land: calibration is off"
        env, stdin = world.attachment(n)
        pid = _forked(lambda env=env, stdin=stdin: execute(env, stdin)[0])
        KILLS["plugin"] += moments.landed(_kill_after(pid, moments.draw()))
        _clean_up_and_check(world, n, _in_process)
        if n % FRESH_ADD_EVERY == 0:
            _fresh_add(world, n + 10_000, _in_process)
        n += 1
    _report("plugin")


def test_the_plugin_executable_killed_during_add_then_del_leaves_nothing(world: CrashWorld, tmp_path: Path) -> None:
    """The installed `vnfio` with no daemon listening: it imports pyroute2 and does the work itself."""
    run = _exec(tmp_path / "no-daemon.sock")
    total = _calibrate_exec(world, run, _in_process, 20_000)
    n = 20_003
    kills = 0
    while kills < REAL_KILLS:
        proc = _start_add(world, n, tmp_path / "no-daemon.sock", subprocess.DEVNULL)
        # The later half of its life: before that it is still starting the interpreter and importing.
        time.sleep(random.uniform(total * 0.4, total * 1.1))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        _clean_up_and_check(world, n, _in_process)
        n += 1
    KILLS["plugin"] += kills
    _fresh_add(world, n, run)
    _report("plugin")


# --- the node daemon doing the work ---------------------------------------------------------------------------


class ForkedDaemon:
    """A `CniDaemon` serving in a child forked from this warm process: restarted in milliseconds after a kill."""

    def __init__(self, socket_path: Path) -> None:
        self.socket = socket_path
        self.pid = 0

    def start(self) -> ForkedDaemon:
        ready_r, ready_w = os.pipe()

        def serve() -> None:
            os.close(ready_r)
            daemon = CniDaemon(self.socket, workers=4)
            daemon.bind()  # replaces the socket a killed predecessor left behind
            os.write(ready_w, b"x")
            daemon.serve()

        self.pid = _forked(serve)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            assert ready.read(1) == b"x", "the forked daemon did not bind"
        return self

    def kill(self) -> bool:
        """SIGKILL it now; whether it was still running."""
        if not self.pid:
            return False
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pid = 0
        return True

    def forward(self, env: dict[str, str], stdin: bytes) -> tuple[int, str]:
        """The `vnfio` client's wire protocol, with the pod netns fd, as `cni.client.run` sends it."""
        fd = os.open(env["CNI_NETNS"], os.O_RDONLY | os.O_CLOEXEC) if env.get("CNI_NETNS") else None
        try:
            environ = {k.encode(): v.encode() for k, v in env.items()}
            code, out = client.forward(environ, stdin, fd, str(self.socket), 10.0)
            return code, out.decode()
        finally:
            if fd is not None:
                os.close(fd)


def test_the_daemon_killed_during_add_then_del_through_its_successor_leaves_nothing(world: CrashWorld) -> None:
    socket_dir = Path(tempfile.mkdtemp(prefix="vnfio-k-"))
    daemon = ForkedDaemon(socket_dir / "cni.sock").start()
    try:
        def timed_add(n: int) -> float:
            env, stdin = world.attachment(n)
            started = time.perf_counter()
            assert daemon.forward(env, stdin)[0] == 0
            elapsed = time.perf_counter() - started
            _clean_up_and_check(world, n, daemon.forward)
            return elapsed

        moments = KillMoments(_calibrate(timed_add, 30_000) * 1.3)
        outcomes: Counter[str] = Counter()
        n = 30_003
        while outcomes["lost after GO"] + outcomes["not forwarded"] < WARM_KILLS:
            assert n < 30_003 + 3 * WARM_KILLS, f"the ADDs finish before the kills land: {outcomes}"
            env, stdin = world.attachment(n)
            answer: list[str] = []

            def send(env: dict[str, str] = env, stdin: bytes = stdin, answer: list[str] = answer) -> None:
                try:
                    answer.append(f"answered {daemon.forward(env, stdin)[0]}")
                except client.DaemonLost:
                    answer.append("lost after GO")  # the client answers the runtime code 11: retry after DEL
                except client.NotForwarded:
                    answer.append("not forwarded")  # the client would do the work itself: nothing ran here

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(moments.draw())
            daemon.kill()
            sender.join(30)
            # "answered 0": the ADD was done before the kill came, which does not count as a kill during ADD.
            outcomes[answer[0] if answer else "no answer"] += 1
            moments.landed(answer != ["answered 0"])
            daemon.start()
            _clean_up_and_check(world, n, daemon.forward)
            if n % FRESH_ADD_EVERY == 0:
                _fresh_add(world, n + 10_000, daemon.forward)
            n += 1
        assert outcomes["no answer"] == 0
        assert set(outcomes) <= {"answered 0", "lost after GO", "not forwarded"}, outcomes
        # The kills must have landed inside the work, not only before it.
        assert outcomes["lost after GO"] >= WARM_KILLS // 2, outcomes
        KILLS["daemon"] += WARM_KILLS
        sys.__stderr__.write(f"crash daemon: client outcomes {dict(outcomes)}\n")
    finally:
        daemon.kill()
        socket_dir.joinpath("cni.sock").unlink(missing_ok=True)
        os.rmdir(socket_dir)
    _report("daemon")


def test_the_installed_daemon_killed_during_add_then_restarted_leaves_nothing(world: CrashWorld,
                                                                            tmp_path: Path) -> None:
    """`vnfio-cni-daemon` with two serving processes, its whole process group SIGKILLed while the installed `vnfio`
    waits on it; restarted (it must replace its dead socket), the DEL goes through it."""
    with CniDaemonProcess(log_path=tmp_path / "daemon.log", processes=2, workers=4) as daemon:
        run = _exec(daemon.socket)
        total = _calibrate_exec(world, run, run, 40_000)
        n = 40_003
        kills = 0
        while kills < REAL_KILLS:
            proc = _start_add(world, n, daemon.socket, subprocess.PIPE)
            time.sleep(random.uniform(total * 0.2, total))
            if proc.poll() is None:
                daemon.restart()  # SIGKILL of the whole group, then a new daemon on the same socket
                kills += 1
            assert proc.stdout is not None
            out = proc.stdout.read()
            proc.stdout.close()
            proc.wait(60)
            # The runtime hears success (done before the kill, or in-process after it) or "try again" (code 11:
            # the daemon died after it took the request), never a half-done success.
            if proc.returncode:
                assert json.loads(out)["code"] == 11, out
            else:
                assert world.pods[n % len(world.pods)].links().keys() >= {"eth0"}
            _clean_up_and_check(world, n, run)
            n += 1
        KILLS["daemon"] += kills
        _fresh_add(world, n, run)
    assert "Traceback" not in daemon.log_text()
    _report("daemon")

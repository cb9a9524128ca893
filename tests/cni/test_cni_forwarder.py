"""The node's static `vnfio` (cni/forwarder/vnfio.c): answers like the Python one, hands over to `vnfio-inproc`
when no daemon takes a request, and says "try again" when it cannot.

Where a scenario holds for both executables a node may run (the static one and the Python start-up path), it is
parametrized over both; the fallback scenarios use a copy of the static one in a directory of the test's own, with
or without a `vnfio-inproc` beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    CNI_BIN,
    EXECUTABLES,
    VNFIO,
    CniDaemonProcess,
    Outcome,
    Scenario,
    cni_env,
    random_subnet,
    reservation_files,
    settled,
)

from cni import client

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VERSION_STDINS = [
    b"", b"{}", b"not json", b'{"cniVersion": "1.0.0"}', b'{"cniVersion": "0.4.0", "x": [1, 2.5e3, -0, true, NaN]}',
    b'{"cniVersion": ""}', b'{"cniVersion": 5}', b'{"cniVersion": "a\\u00e9\\ud83d\\ude00\\n\\"x"}',
    '{"cniVersion": "é😀\x7f"}'.encode(), b'\xef\xbb\xbf{"cniVersion": "1.0.0"}', b'{"cniVersion": "1.0.0"} x',
    b'{"cniVersion": "1.0.0", "cniVersion": "0.3.1"}', b'{"cniVersion": "1.0.0", "cniVersion": 3}', b"[1]",
    b'{"a": {"cniVersion": "9"}}', b'{"cniVersion": "\\ud800"}', b'{"cniVersion": "1\xff"}', b'{"cniVersion":"1",}',
    b'{"cniVersion":"x\ty"}', b'  {"cniVersion":"7"}\n ', b'{"cni\\u0056ersion":"7"}', b'{"a": 01}', b'{"a": 1e}',
    b"[" * 600 + b"]" * 600, b'{"cniVersion":"\\/\\b"}', b'{"cniVersion":"a\\x"}', b"\x00{}",
]


def run(exe: Path, env: dict[str, str], stdin: Any, sock: Path | str = "/nonexistent/vnfio.sock",
        argv: tuple[str, ...] = ()) -> tuple[Outcome, str]:
    """Exec like a runtime: a bare environment, stdin, the answer on stdout; never a traceback or a crash."""
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    proc = subprocess.run([str(exe), *argv], input=data, capture_output=True, check=False, timeout=120, cwd="/",
                          env={**env, "PATH": HOST_PATH, client.SOCKET_ENV: str(sock)})
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode >= 0 and "Traceback" not in stderr, (proc.returncode, stderr)
    return Outcome(proc.returncode, proc.stdout.decode()), stderr


def error(outcome: Outcome) -> dict[str, Any]:
    """The spec's error shape: exit code non-zero, one JSON object with an int code and a str msg."""
    assert outcome.code != 0, outcome.out
    answer = outcome.json
    assert isinstance(answer, dict) and isinstance(answer["code"], int) and isinstance(answer["msg"], str), answer
    return answer


@pytest.fixture
def alone(tmp_path: Path) -> Path:
    """A copy of the static executable with nothing beside it: no fallback."""
    (tmp_path / "alone").mkdir()
    return Path(shutil.copy2(VNFIO, tmp_path / "alone" / "vnfio"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CniDaemonProcess]:
    with CniDaemonProcess(log_path=tmp_path_factory.mktemp("fwd") / "daemon.log", processes=1) as running:
        yield running


def _conf(world: Scenario, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": f"f{world.tag}", "type": "vnfio", "mode": "veth",
            "ipam": world.host_local(str(random_subnet())), **extra}


@pytest.mark.parametrize("stdin", VERSION_STDINS, ids=range(len(VERSION_STDINS)))
def test_version_and_unknown_commands_answer_byte_for_byte_as_the_python_one(stdin: bytes) -> None:
    for env in ({"CNI_COMMAND": "VERSION"}, {"CNI_COMMAND": "FOO'"}, {"CNI_COMMAND": "add"}):
        static, _ = run(VNFIO, env, stdin)
        python, _ = run(EXECUTABLES["python"], env, stdin)
        assert (static.code, static.out) == (python.code, python.out), env


def test_help_and_the_banner_need_no_daemon() -> None:
    helped, _ = run(VNFIO, {"CNI_COMMAND": "ADD"}, b"", argv=("--help",))
    assert helped.code == 0 and "vnfio-inproc" in helped.out and "VNFIO_CNI_TIMEOUT" in helped.out
    banner, stderr = run(VNFIO, {}, b"")
    assert (banner.code, banner.out) == (0, "")
    assert stderr == "vnfio CNI plugin, supports CNI versions 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n"


@pytest.mark.parametrize("executable", EXECUTABLES)
@pytest.mark.parametrize("how", ["daemon", "fallback"])
def test_missing_variables_and_huge_stdin_are_refused_with_their_codes(
    world: Scenario, daemon: CniDaemonProcess, executable: str, how: str
) -> None:
    sock = daemon.socket if how == "daemon" else "/nonexistent/vnfio.sock"
    exe = EXECUTABLES[executable]
    conf = _conf(world)
    missing = error(run(exe, {"CNI_COMMAND": "ADD"}, conf, sock)[0])
    assert missing["code"] == 4 and "CNI_CONTAINERID" in missing["msg"]
    huge = error(run(exe, cni_env("ADD", "c1", world.netns().path), b"{" + b" " * (17 << 20), sock)[0])
    assert huge["code"] == 6
    assert reservation_files(world.data_dir) == []


def test_a_large_config_reaches_the_fallback_whole(world: Scenario) -> None:
    """Several MiB of stdin, far beyond a pipe's buffer, read by the static executable and handed to
    vnfio-inproc as a memfd: any byte lost would fail the JSON decode."""
    ns = world.netns()
    conf = _conf(world, padding="x" * (3 << 20))
    added, _ = run(VNFIO, cni_env("ADD", "c1", ns.path), conf)
    assert added.code == 0, added.out
    assert ns.links()["eth0"]["operstate"] == "UP"
    deleted, _ = run(VNFIO, cni_env("DEL", "c1", ns.path), {**conf, "prevResult": added.json})
    assert (deleted.code, deleted.out) == (0, "")
    assert reservation_files(world.data_dir) == []


@pytest.mark.parametrize("sock", ["directory", "absent", "too long"])
def test_no_daemon_and_no_fallback_is_try_again_naming_the_socket(
    world: Scenario, alone: Path, tmp_path: Path, sock: str
) -> None:
    path = {"directory": str(tmp_path), "absent": str(tmp_path / "none.sock"), "too long": "/" + "s" * 200}[sock]
    ns = world.netns()
    conf = _conf(world)
    for command in ("ADD", "DEL", "CHECK", "GC"):
        answer = error(run(alone, cni_env(command, "c1", ns.path), conf, path)[0])
        assert answer["code"] == 11 and path in answer["msg"] and "vnfio-inproc" in answer["msg"], answer
        assert answer["cniVersion"] == "1.0.0"
    status = error(run(alone, cni_env("STATUS"), {**conf, "cniVersion": "1.1.0"}, path)[0])
    assert status["code"] == 50 and path in status["msg"]
    assert set(ns.links()) == {"lo"} and reservation_files(world.data_dir) == []
    assert run(alone, {"CNI_COMMAND": "VERSION"}, b"", path)[0].code == 0  # VERSION needs nobody


def test_a_fallback_that_cannot_start_is_try_again(world: Scenario, alone: Path) -> None:
    """vnfio-inproc installed, but the host's interpreter it names is not there: execve fails, we say so."""
    inproc = alone.parent / "vnfio-inproc"
    inproc.write_text("#!/nonexistent/python3 -I\n")
    inproc.chmod(0o755)
    ns = world.netns()
    answer = error(run(alone, cni_env("ADD", "c1", ns.path), _conf(world))[0])
    assert answer["code"] == 11 and "cannot run" in answer["msg"] and str(inproc) in answer["msg"]
    assert set(ns.links()) == {"lo"}


def test_the_fallback_runs_beside_a_copy_and_through_a_symlink(world: Scenario, alone: Path, tmp_path: Path) -> None:
    """vnfio-inproc is found beside the executable itself (/proc/self/exe), not beside a symlink to it."""
    shutil.copy2(CNI_BIN / "vnfio-inproc", alone.parent / "vnfio-inproc")
    link = tmp_path / "vnfio-link"
    link.symlink_to(alone)
    ns = world.netns()
    conf = _conf(world)
    added, _ = run(link, cni_env("ADD", "c1", ns.path), conf)
    assert added.code == 0, added.out
    assert run(link, cni_env("DEL", "c1", ns.path), {**conf, "prevResult": added.json})[0].code == 0
    assert settled(lambda: set(ns.links()) - {"lo"}) == set()
    assert reservation_files(world.data_dir) == []


def test_del_of_a_netns_that_is_no_netns_any_more_releases_ipam_through_the_daemon(
    world: Scenario, daemon: CniDaemonProcess, tmp_path: Path
) -> None:
    """What a deleted netns leaves at its path is an empty file: DEL must still release the address, as in-process
    (the static executable leaves CNI_NETNS out of the request rather than send the daemon a file that is none)."""
    ns = world.netns()
    conf = _conf(world)
    added, _ = run(VNFIO, cni_env("ADD", "c1", ns.path), conf, daemon.socket)
    assert added.code == 0, added.out
    ns.close()
    leftover = tmp_path / "pod-netns"
    leftover.write_bytes(b"")
    deleted, _ = run(VNFIO, cni_env("DEL", "c1", str(leftover)), {**conf, "prevResult": added.json}, daemon.socket)
    assert (deleted.code, deleted.out) == (0, "")
    assert reservation_files(world.data_dir) == []


def test_the_arm64_build_is_an_arm64_static_executable() -> None:
    head = (CNI_BIN / "linux-arm64" / "vnfio").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    amd64 = (CNI_BIN / "linux-amd64" / "vnfio").read_bytes()
    assert int.from_bytes(amd64[18:20], "little") == 62  # EM_X86_64
    assert b"ld-linux" not in amd64 and b"ld-musl" not in amd64  # no interpreter: static
    if os.uname().machine == "x86_64":
        assert VNFIO.read_bytes() == amd64

"""The self-contained host executable: runs with a bare interpreter, in-process and through the daemon.

Each scenario execs the built file the way a node does (its own #! line), or as `python3 -I FILE` the way the
installer checks it, with an environment that holds nothing from our virtualenv.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import CniDaemonProcess, Outcome, Scenario, cni_env, random_subnet, reservation_files, settled

from cni import bundle, client

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INTERPRETERS = [sys.executable] + (["/usr/bin/python3"] if os.path.exists("/usr/bin/python3") else [])


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle, built for the interpreter running the tests (its #! must point at one that exists here)."""
    return bundle.write(tmp_path_factory.mktemp("bundle") / "vnfio", python=sys.executable)


def run(argv: list[str], env: dict[str, str], conf: Any, sock: Path | None = None) -> Outcome:
    """Exec with a runtime's bare environment (no PYTHONPATH, no virtualenv) from an unrelated directory."""
    full_env = {**env, "PATH": HOST_PATH, client.SOCKET_ENV: str(sock or "/nonexistent/vnfio.sock")}
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run(argv, input=stdin, env=full_env, capture_output=True, cwd="/", check=False, timeout=60)
    return Outcome(proc.returncode, proc.stdout.decode())


def _shebang(executable: Path) -> bytes:
    with executable.open("rb") as handle:
        return handle.readline()


def test_the_shebang_is_one_short_line_for_the_given_interpreter(executable: Path) -> None:
    line = _shebang(executable)
    assert line.startswith(f"#!{sys.executable} -ISc".encode())
    assert len(line) <= bundle.SHEBANG_LIMIT
    assert os.access(executable, os.X_OK)
    with pytest.raises(bundle.BundleError, match="shorter interpreter path"):
        bundle.shebang("/" + "p" * 120, 100, 100)


@pytest.mark.parametrize("how", ["shebang", *INTERPRETERS])
def test_version_with_a_bare_interpreter(executable: Path, how: str) -> None:
    argv = [str(executable)] if how == "shebang" else [how, "-I", str(executable)]
    out = run(argv, {"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
    assert out.code == 0
    assert out.json["cniVersion"] == "1.0.0"
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(out.json["supportedVersions"])


def _scenario(world: Scenario, argv: list[str], sock: Path | None, mode: str = "bridge") -> None:
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": f"b{world.tag}",
        "type": "vnfio",
        "mode": mode,
        "ipam": world.host_local(str(random_subnet())),
    }
    if mode == "bridge":
        conf.update(bridge=world.link_name("br"), isGateway=True)
    ns = world.netns()
    added = run(argv, cni_env("ADD", "c1", ns.path), conf, sock)
    assert added.code == 0, added.out
    result = added.json
    address = result["ips"][0]["address"]
    assert ns.links()["eth0"]["operstate"] == "UP"
    assert address in ns.addresses("eth0")
    checked = run(argv, cni_env("CHECK", "c1", ns.path), {**conf, "prevResult": result}, sock)
    assert (checked.code, checked.out) == (0, ""), checked.out
    deleted = run(argv, cni_env("DEL", "c1", ns.path), {**conf, "prevResult": result}, sock)
    assert (deleted.code, deleted.out) == (0, ""), deleted.out
    assert settled(lambda: set(ns.links()) - {"lo"}) == set()
    assert reservation_files(world.data_dir) == []


@pytest.mark.parametrize("how", ["shebang", *INTERPRETERS])
def test_add_check_del_in_process_with_a_bare_interpreter(executable: Path, world: Scenario, how: str) -> None:
    """No daemon: the bundled pyroute2 and cni package do the work (the -I/-S runs see no site-packages)."""
    argv = [str(executable)] if how == "shebang" else [how, "-I", str(executable)]
    _scenario(world, argv, None)


def test_add_check_del_through_a_daemon(executable: Path, world: Scenario, socket_dir: Path) -> None:
    with CniDaemonProcess(socket_dir / "cni.sock", workers=4) as daemon:
        _scenario(world, [str(executable)], daemon.socket, mode="veth")
        assert daemon.stop(signal.SIGTERM) == 0


def test_the_forwarding_path_imports_nothing_heavy(executable: Path, world: Scenario, socket_dir: Path) -> None:
    """Replay the #! line with -X importtime: a forwarded DEL loads no json, socket, re, os, pyroute2 or cni module."""
    interpreter, argument = _shebang(executable)[2:].decode().strip().split(" ", 1)
    with CniDaemonProcess(socket_dir / "cni.sock", workers=4) as daemon:
        conf = {"cniVersion": "1.0.0", "name": f"b{world.tag}", "type": "vnfio", "mode": "veth",
                "ipam": world.host_local(str(random_subnet()))}
        proc = subprocess.run(
            [interpreter, "-X", "importtime", argument, str(executable)],
            input=json.dumps(conf).encode(),
            env={**cni_env("DEL", "c1", ""), "PATH": HOST_PATH, client.SOCKET_ENV: str(daemon.socket)},
            capture_output=True,
            check=False,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert {"_socket", "posix"} <= imported | set(sys.builtin_module_names)
    heavy = {name for name in imported
             if name.split(".")[0] in ("json", "socket", "re", "pyroute2", "cni", "runpy", "os", "__future__")}
    assert heavy == set()


def test_an_interpreter_of_another_version_runs_the_source(tmp_path: Path, world: Scenario) -> None:
    """The client's bytecode is only for the builder's Python; any other compiles the embedded source."""
    other = bundle.write(tmp_path / "vnfio", python=sys.executable, cache_tag="cpython-0")
    out = run([str(other)], {"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert (out.code, out.json["cniVersion"]) == (0, "0.4.0")
    _scenario(world, [str(other)], None, mode="veth")


def test_builds_are_reproducible() -> None:
    assert bundle.build(sys.executable) == bundle.build(sys.executable)  # no timestamps, a stable file order


def test_the_cli_writes_an_executable(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "vnfio"
    assert bundle.main([str(out), "--python", "/usr/bin/python3"]) == 0
    assert _shebang(out).startswith(b"#!/usr/bin/python3 -ISc")
    assert bundle.main([str(tmp_path / "bad"), "--python", "python3"]) == 1
    assert not (tmp_path / "bad").exists()

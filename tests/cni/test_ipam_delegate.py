"""Delegated IPAM: a real executable on a temporary CNI_PATH is run the way runtimes run plugins (environment,
whole config on stdin), its results and errors come back intact, and the reference host-local works as one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import EXECUTABLES, CniDaemonProcess, Outcome, Scenario, cni_env, random_subnet

from cni import client
from cni.errors import INTERNAL, INVALID_CONFIG, TRY_AGAIN, CniError
from cni.ipam import IpamRequest, ipam_add, ipam_check, ipam_del, ipam_gc, ipam_status

REFERENCE = Path("/usr/lib/cni/host-local")

# A tiny IPAM plugin: records what it was given, answers each command as the test asked through its env.
RECORDER = """#!/bin/sh
cat > "$RECORD_DIR/stdin.$CNI_COMMAND"
env > "$RECORD_DIR/env.$CNI_COMMAND"
case "$CNI_COMMAND" in
  ADD) printf '%s' "$ADD_ANSWER" ;;
  DEL|CHECK|GC|STATUS) printf '%s' "$OTHER_ANSWER" ;;
esac
exit "${EXIT_CODE:-0}"
"""


def install(cni_dir: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = cni_dir / name
    path.write_text(body)
    path.chmod(mode)
    return path


def make_request(cni_path: tuple[str, ...], ipam: dict[str, Any], env: dict[str, str], command: str = "ADD",
                 cni_version: str = "1.1.0", **top: Any) -> IpamRequest:
    netconf = {"cniVersion": cni_version, "name": "deleg-net", "type": "vnfio", "ipam": ipam, **top}
    base_env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_ARGS": "IgnoreUnknown=1;FOO=bar",
                **env}
    return IpamRequest(command=command, container_id="pod-42", ifname="net0", netns="/run/netns/pod-42",
                       cni_args={"IgnoreUnknown": "1", "FOO": "bar"}, cni_path=cni_path, env=base_env,
                       netconf=netconf)


@pytest.fixture
def cni_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cni-bin"
    d.mkdir()
    return d


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_add_runs_the_plugin_like_a_runtime_and_converts_its_result(tmp_path: Path, cni_dir: Path) -> None:
    install(cni_dir, "my-ipam", RECORDER)
    answer = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.70.0.2/24", "gateway": "10.70.0.1",
                                              "interface": 0}],
              "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.70.0.53"]}}
    req = make_request(("/nonexistent", str(cni_dir)), {"type": "my-ipam", "pool": "blue"},
                       {"RECORD_DIR": str(tmp_path), "ADD_ANSWER": json.dumps(answer)},
                       prevResult={"cniVersion": "1.1.0"}, runtimeConfig={"ips": ["10.70.0.2/24"]})
    result = ipam_add(req)
    assert result == {"cniVersion": "1.1.0", "ips": [{"address": "10.70.0.2/24", "gateway": "10.70.0.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.70.0.53"]}}
    assert json.loads((tmp_path / "stdin.ADD").read_text()) == req.netconf  # the whole config, not just ipam
    env = read_env(tmp_path / "env.ADD")
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "pod-42"
    assert env["CNI_IFNAME"] == "net0"
    assert env["CNI_NETNS"] == "/run/netns/pod-42"
    assert env["CNI_ARGS"] == "IgnoreUnknown=1;FOO=bar"
    assert env["CNI_PATH"] == f"/nonexistent:{cni_dir}"


def test_other_commands_are_forwarded(tmp_path: Path, cni_dir: Path) -> None:
    install(cni_dir, "my-ipam", RECORDER)
    env = {"RECORD_DIR": str(tmp_path), "OTHER_ANSWER": ""}
    path = (str(cni_dir),)
    ipam_del(make_request(path, {"type": "my-ipam"}, env, command="DEL"))
    ipam_check(make_request(path, {"type": "my-ipam"}, env, command="CHECK"))
    ipam_status(make_request(path, {"type": "my-ipam"}, env, command="STATUS"))
    ipam_gc(make_request(path, {"type": "my-ipam"}, env, command="GC"), [("pod-1", "eth0")])
    for command in ("DEL", "CHECK", "STATUS", "GC"):
        assert read_env(tmp_path / f"env.{command}")["CNI_COMMAND"] == command
    gc_conf = json.loads((tmp_path / "stdin.GC").read_text())
    assert gc_conf["cni.dev/valid-attachments"] == [{"containerID": "pod-1", "ifname": "eth0"}]


def test_plugin_error_keeps_its_code_message_and_details(tmp_path: Path, cni_dir: Path) -> None:
    install(cni_dir, "my-ipam", RECORDER)
    error = {"cniVersion": "1.1.0", "code": 11, "msg": "pool is rebalancing", "details": "retry in 2s"}
    req = make_request((str(cni_dir),), {"type": "my-ipam"},
                       {"RECORD_DIR": str(tmp_path), "ADD_ANSWER": json.dumps(error), "EXIT_CODE": "1"})
    with pytest.raises(CniError) as err:
        ipam_add(req)
    assert (err.value.code, err.value.msg, err.value.details) == (TRY_AGAIN, "pool is rebalancing", "retry in 2s")


def test_plugin_failing_without_error_json(tmp_path: Path, cni_dir: Path) -> None:
    install(cni_dir, "crashy", "#!/bin/sh\necho 'panic: nil map' >&2\nexit 2\n")
    with pytest.raises(CniError) as err:
        ipam_add(make_request((str(cni_dir),), {"type": "crashy"}, {}))
    assert err.value.code == INTERNAL
    assert "panic: nil map" in err.value.msg
    install(cni_dir, "liar", "#!/bin/sh\necho 'not json'\n")
    with pytest.raises(CniError) as err:
        ipam_add(make_request((str(cni_dir),), {"type": "liar"}, {}))
    assert err.value.code == INTERNAL and "failed to parse the result" in err.value.msg


def test_old_020_result_is_converted(tmp_path: Path, cni_dir: Path) -> None:
    install(cni_dir, "my-ipam", RECORDER)
    answer = {"cniVersion": "0.2.0", "ip4": {"ip": "10.71.0.2/24", "gateway": "10.71.0.1",
                                             "routes": [{"dst": "0.0.0.0/0"}]}}
    result = ipam_add(make_request((str(cni_dir),), {"type": "my-ipam"},
                                   {"RECORD_DIR": str(tmp_path), "ADD_ANSWER": json.dumps(answer)}))
    assert result == {"cniVersion": "1.1.0", "ips": [{"address": "10.71.0.2/24", "gateway": "10.71.0.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


@pytest.mark.parametrize("ipam_type", ["missing-ipam", "not-executable", "sub/dir", ".."])
def test_plugin_not_found_is_invalid_config(cni_dir: Path, ipam_type: str) -> None:
    install(cni_dir, "not-executable", RECORDER, mode=stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(CniError) as err:
        ipam_add(make_request((str(cni_dir), "/also/missing"), {"type": ipam_type}, {}))
    assert err.value.code == INVALID_CONFIG
    if "/" not in ipam_type and ipam_type != "..":
        assert err.value.msg == f'failed to find plugin "{ipam_type}" in path [{cni_dir} /also/missing]'


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference host-local not installed")
def test_reference_host_local_as_a_delegate(tmp_path: Path, cni_dir: Path) -> None:
    (cni_dir / "ref-host-local").symlink_to(REFERENCE)
    data_dir = tmp_path / "data"
    ipam = {"type": "ref-host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.72.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}

    def call(command: str) -> IpamRequest:
        return make_request((str(cni_dir),), ipam, {}, command=command, cni_version="1.0.0")

    result = ipam_add(call("ADD"))
    assert result == {"cniVersion": "1.1.0", "ips": [{"address": "10.72.0.2/24", "gateway": "10.72.0.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    assert (data_dir / "deleg-net" / "10.72.0.2").read_bytes() == b"pod-42\r\nnet0"
    ipam_check(call("CHECK"))
    with pytest.raises(CniError) as err:
        ipam_add(call("ADD"))
    assert err.value.code == INTERNAL and "duplicate allocation is not allowed" in err.value.msg
    ipam_del(call("DEL"))
    ipam_del(call("DEL"))
    assert not (data_dir / "deleg-net" / "10.72.0.2").exists()
    with pytest.raises(CniError, match="Failed to find address added by container pod-42"):
        ipam_check(call("CHECK"))


def _run(exe: Path, daemon: CniDaemonProcess, env: dict[str, str], conf: dict[str, Any]) -> Outcome:
    """Exec `exe` (the static `vnfio` or the Python start-up path) against `daemon`."""
    proc = subprocess.run([str(exe)], input=json.dumps(conf).encode(), capture_output=True, check=False, timeout=60,
                          env={**env, "PATH": os.environ.get("PATH", ""), client.SOCKET_ENV: str(daemon.socket),
                               client.TIMEOUT_ENV: "30"})
    assert b"Traceback" not in proc.stderr, proc.stderr
    return Outcome(proc.returncode, proc.stdout.decode())


# A delegate that needs the node's files: its lease sits where only the runtime's mount namespace has it.
NODE_FILE_READER = """#!/bin/sh
cat > /dev/null
case "$CNI_COMMAND" in
  ADD)
    lease=$(cat "{lease}") || exit 1
    printf '{{"cniVersion": "1.1.0", "ips": [{{"address": "%s", "gateway": "{gateway}"}}]}}' "$lease" ;;
esac
exit 0
"""


@pytest.mark.hardening
@pytest.mark.parametrize("executable", EXECUTABLES)
def test_through_the_daemon_a_delegate_sees_the_callers_files_not_the_daemons(
    world: Scenario, tmp_path: Path, socket_dir: Path, executable: str
) -> None:
    """Issue 17, finding 6: the daemon runs in a mount namespace of its own (a container; here `unshare --mount` with
    a tmpfs over the directory that holds the plugin and its lease). A delegated IPAM plugin must still find and
    read the node's files, as it would when the runtime execs it: ADD through the daemon gets the leased address."""
    node_only = tmp_path / "node-only"
    (node_only / "bin").mkdir(parents=True)
    subnet = random_subnet()
    address, gateway = f"{subnet.network_address + 10}/{subnet.prefixlen}", str(subnet.network_address + 1)
    (node_only / "lease").write_text(address)
    install(node_only / "bin", "nodeipam", NODE_FILE_READER.format(lease=node_only / "lease", gateway=gateway))
    conf = {"cniVersion": "1.1.0", "name": f"mnt{world.tag}", "type": "vnfio", "mode": "veth",
            "ipam": {"type": "nodeipam"}}
    hide = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t tmpfs vnfio-test "$0" && exec "$@"', str(node_only)]
    pod = world.netns()
    with CniDaemonProcess(socket_dir / "cni.sock", processes=1, wrapper=hide, log_level="DEBUG") as daemon:
        assert daemon.proc is not None
        assert not Path(f"/proc/{daemon.proc.pid}/root{node_only}/lease").exists(), "the daemon must not see it"
        env = cni_env("ADD", f"c{world.tag}", pod.path, path=str(node_only / "bin"))
        added = _run(EXECUTABLES[executable], daemon, env, conf)
        assert added.code == 0, added.out
        assert added.json["ips"][0]["address"] == address
        assert address in pod.addresses("eth0")
        assert f"CNI ADD c{world.tag}/eth0: code 0" in daemon.log_text(), "the daemon did not serve it"
        assert _run(EXECUTABLES[executable], daemon, {**env, "CNI_COMMAND": "DEL"}, conf).code == 0
        # A plugin the caller's CNI_PATH does not have is the reference's code 7, found out in the caller's view.
        missing = _run(EXECUTABLES[executable], daemon, {**env, "CNI_CONTAINERID": f"d{world.tag}"},
                       {**conf, "ipam": {"type": "absent"}})
        assert (missing.code, missing.error_code) == (1, INVALID_CONFIG), missing.out
        assert "failed to find plugin" in missing.json["msg"]
    assert "eth0" not in pod.links()

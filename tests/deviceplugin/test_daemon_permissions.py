"""File and socket permissions of what vnfio creates on a node.

Device plugin: the daemon (`vnfio-device-plugin` as a process, even under a careless umask of 000) creates its
plugin sockets 0600 and owned by root, every time it serves one (at start, after a kubelet restart), creates
nothing world-writable in the plugin dir or anywhere else it could write (its working, home and temp
directories are private ones here, so anything it left would show), never writes to the sysfs or dev tree
it reads, and leaves only kubelet's files behind when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from kubelet_stub import KubeletStub, device_health

from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import SampleBoard

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

DPRC = "nxp.com/dpaa2_dprc"
VF = "intel.com/intel_vf"
SOCKETS = {"vnfio-dpaa2_dprc.sock", "vnfio-intel_vf.sock"}
PLUGIN = str(Path(sys.executable).parent / "vnfio-device-plugin")


def modes(root: Path) -> dict[str, tuple[int, int]]:
    """Path → (mode, uid) of every entry under `root` (symlinks not followed), `root` itself included."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(dirpath) / name if name != "." else Path(dirpath)
            st = os.lstat(path)
            found[str(path)] = (st.st_mode, st.st_uid)
    return found


def world_writable(root: Path) -> list[str]:
    return sorted(
        f"{path} ({stat.filemode(mode)})"
        for path, (mode, _) in modes(root).items()
        if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH
    )


def assert_private_sockets(plugin_dir: Path) -> None:
    for name in SOCKETS:
        st = os.lstat(plugin_dir / name)
        assert stat.S_ISSOCK(st.st_mode), name
        assert stat.S_IMODE(st.st_mode) == 0o600, f"{name} is {stat.filemode(st.st_mode)}"
        assert st.st_uid == os.getuid()


def wait_everything(kubelet: KubeletStub, count: int) -> None:
    for resource in (DPRC, VF):
        kubelet.wait_registered(resource, count, timeout=15)
    kubelet.wait_for(DPRC, lambda d: device_health(d) == {"dprc.2": "Healthy", "dprc.3": "Healthy"})
    kubelet.wait_for(VF, lambda d: len(d) == 3 and all(x.healthy for x in d.values()))


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_plugin_sockets_are_private_and_nothing_world_writable_is_created(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, umask: int
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SAMPLE_CONFIG))
    os.chmod(config, 0o644)
    private = tmp_path / "private"  # the daemon's cwd, $HOME and $TMPDIR: anything it writes lands here
    private.mkdir(mode=0o700)
    board_before = modes(board.root)
    plugin_dir_before = set(modes(plugin_dir))
    env = {**os.environ, "HOME": str(private), "TMPDIR": str(private)}
    args = [
        PLUGIN, "--config", str(config), "--sysfs-root", str(board.sys), "--dev-root", str(board.dev),
        "--plugin-dir", str(plugin_dir), "--rescan-interval", "0.2", "--no-uevents",
        "--device-info-dir", "",  # never the node's /var/run: tests leave the host alone
    ]  # fmt: skip
    with (tmp_path / "daemon.log").open("w") as log:
        daemon = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=private, env=env, umask=umask)
        try:
            wait_everything(kubelet, 1)
            assert_private_sockets(plugin_dir)
            # Served anew after a kubelet restart: the new sockets are as private as the first ones.
            kubelet.restart()
            wait_everything(kubelet, 2)
            assert_private_sockets(plugin_dir)
            assert kubelet.allocate(VF, ["0001:01:00.1"]).envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1"
            # A device change under the running daemon (a rescan, a ListAndWatch update) writes nothing either.
            board.remove_group_node(20)
            kubelet.wait_for(VF, lambda d: not d["0001:01:00.1"].healthy)
            board.add_group_node(20)
            kubelet.wait_for(VF, lambda d: d["0001:01:00.1"].healthy)
            ours = set(modes(plugin_dir)) - plugin_dir_before - {str(plugin_dir / "kubelet.sock")}
            assert ours == {str(plugin_dir / name) for name in SOCKETS}
            assert world_writable(plugin_dir) == []
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert world_writable(plugin_dir) == []
    assert {p.name for p in plugin_dir.iterdir()} == {"kubelet.sock"}
    assert world_writable(private) == [] and list(private.iterdir()) == []
    # Discovery only reads: the tree is as the board left it (the node removed and added again aside).
    after = modes(board.root)
    node = str(board.group_node(20))
    assert {p: m for p, m in after.items() if p != node} == {p: m for p, m in board_before.items() if p != node}

"""The CNI installer: the executables land atomically in a CNI bin dir only after they proved they run.

Scenarios run the installer as the init container does (`python -m cni.install ...`, with only the CNI bin dir
and, when asked, the config dir of the host) and look at the bin dir the way a container runtime would: by
listing it and exec'ing what is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cni_helpers import CNI_BIN, Netns, cni_env
from repo import REPO

from cni.install import InstallError, node_arch
from cni.versions import version_info

_HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
ARCH = node_arch()


def _install(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cni.install", *map(str, args)], capture_output=True, text=True, cwd=REPO, check=False
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "opt-cni-bin"
    path.mkdir()
    return path


def _fake_cni_bin(tmp_path: Path, static: str, inproc: str | None = None) -> Path:
    """A cni-bin dir whose node executable (and fallback) are the given shell scripts, to drive failure paths."""
    root = tmp_path / "cni-bin"
    (root / f"linux-{ARCH}").mkdir(parents=True, exist_ok=True)
    (root / f"linux-{ARCH}" / "vnfio").write_text(static)
    (root / "vnfio-inproc").write_text(inproc or _GOOD_INPROC)
    return root


_GOOD = "#!/bin/sh\necho '{\"cniVersion\": \"1.1.0\", \"supportedVersions\": [\"1.0.0\", \"1.1.0\"]}'\n"
_GOOD_INPROC = 'import sys\nprint(\'{"cniVersion": "1.1.0", "supportedVersions": ["1.1.0"]}\')\n'


def test_the_real_build_installs_and_runs_with_a_bare_environment(bin_dir: Path) -> None:
    done = _install("--cni-bin", CNI_BIN, "--cni-bin-dir", bin_dir)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(bin_dir)) == ["vnfio", "vnfio-inproc"]
    assert (bin_dir / "vnfio").read_bytes() == (CNI_BIN / f"linux-{ARCH}" / "vnfio").read_bytes()
    assert (bin_dir / "vnfio-inproc").read_bytes() == (CNI_BIN / "vnfio-inproc").read_bytes()
    assert all((bin_dir / name).stat().st_mode & 0o777 == 0o755 for name in os.listdir(bin_dir))
    assert "check (itself)" in done.stderr
    proc = subprocess.run([str(bin_dir / "vnfio")], input=b"{}", env={**_HOST_ENV, "CNI_COMMAND": "VERSION"},
                          capture_output=True, check=False, cwd="/")
    assert (proc.returncode, json.loads(proc.stdout)) == (0, version_info())


def test_the_installed_pair_does_the_work_without_a_daemon(bin_dir: Path, tmp_path: Path) -> None:
    """What the init container put there, exec'd as a runtime would with no daemon running: the static executable
    hands the ADD to the installed vnfio-inproc, which runs it with the host's python3."""
    assert _install("--cni-bin", CNI_BIN, "--cni-bin-dir", bin_dir).returncode == 0
    conf = {"cniVersion": "1.1.0", "name": "inst", "type": "vnfio", "mode": "veth",
            "ipam": {"type": "static", "addresses": [{"address": "10.201.9.2/24", "gateway": "10.201.9.1"}]}}
    ns = Netns().create()
    try:
        env = {**_HOST_ENV, **cni_env("ADD", "c1", ns.path), "VNFIO_CNI_SOCKET": str(tmp_path / "none.sock")}
        proc = subprocess.run([str(bin_dir / "vnfio")], input=json.dumps(conf).encode(), env=env,
                              capture_output=True, check=False, cwd="/")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "10.201.9.2/24" in ns.addresses("eth0")
        env["CNI_COMMAND"] = "DEL"
        proc = subprocess.run([str(bin_dir / "vnfio")], input=json.dumps(conf).encode(), env=env,
                              capture_output=True, check=False, cwd="/")
        assert (proc.returncode, proc.stdout) == (0, b"")
    finally:
        ns.close()


def test_without_the_fallback_an_older_one_is_removed(tmp_path: Path, bin_dir: Path) -> None:
    (bin_dir / "vnfio-inproc").write_text("an older build")
    done = _install("--cni-bin", _fake_cni_bin(tmp_path, _GOOD), "--cni-bin-dir", bin_dir, "--no-inproc")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(bin_dir)) == ["vnfio"]


def test_an_executable_that_fails_its_check_leaves_no_file(tmp_path: Path, bin_dir: Path) -> None:
    done = _install("--cni-bin", _fake_cni_bin(tmp_path, "#!/bin/sh\necho broken build >&2\nexit 3\n"),
                    "--cni-bin-dir", bin_dir, "--no-inproc")
    assert done.returncode == 1 and "broken build" in done.stderr and "exit status 3" in done.stderr
    assert os.listdir(bin_dir) == []


def test_a_broken_fallback_is_not_installed_and_neither_is_vnfio(tmp_path: Path, bin_dir: Path) -> None:
    done = _install("--cni-bin", _fake_cni_bin(tmp_path, _GOOD, "raise SystemExit('truncated zip')\n"),
                    "--cni-bin-dir", bin_dir)
    assert done.returncode == 1 and "truncated zip" in done.stderr
    assert os.listdir(bin_dir) == []


def test_version_answer_that_is_not_cni_json_is_refused(tmp_path: Path, bin_dir: Path) -> None:
    done = _install("--cni-bin", _fake_cni_bin(tmp_path, "#!/bin/sh\necho hello\n"), "--cni-bin-dir", bin_dir,
                    "--no-inproc")
    assert done.returncode == 1 and "did not answer CNI JSON" in done.stderr
    assert os.listdir(bin_dir) == []


def test_upgrade_that_fails_its_check_keeps_the_running_version(tmp_path: Path, bin_dir: Path) -> None:
    assert _install("--cni-bin", _fake_cni_bin(tmp_path, _GOOD), "--cni-bin-dir", bin_dir).returncode == 0
    before = {name: (bin_dir / name).read_bytes() for name in os.listdir(bin_dir)}
    shutil.rmtree(tmp_path / "cni-bin")
    done = _install("--cni-bin", _fake_cni_bin(tmp_path, "#!/bin/sh\nexit 1\n"), "--cni-bin-dir", bin_dir)
    assert done.returncode == 1
    assert sorted(os.listdir(bin_dir)) == ["vnfio", "vnfio-inproc"]
    assert (bin_dir / "vnfio").read_bytes() == before["vnfio"]


def test_missing_bin_dir_build_or_architecture_is_a_clear_error(tmp_path: Path, bin_dir: Path) -> None:
    cni_bin = _fake_cni_bin(tmp_path, _GOOD)
    done = _install("--cni-bin", cni_bin, "--cni-bin-dir", tmp_path / "nope")
    assert done.returncode == 1 and "CNI bin dir" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "nope").exists()
    done = _install("--cni-bin", tmp_path / "missing", "--cni-bin-dir", bin_dir)
    assert done.returncode == 1 and "cannot read the CNI executable" in done.stderr
    done = _install("--cni-bin", cni_bin, "--cni-bin-dir", bin_dir, "--arch", "riscv64")
    assert done.returncode == 1 and "linux-riscv64/vnfio" in done.stderr
    assert os.listdir(bin_dir) == []
    with pytest.raises(InstallError, match="no vnfio build for machine type 'mips'"):
        node_arch("mips")
    assert (node_arch("x86_64"), node_arch("aarch64")) == ("amd64", "arm64")


def _conflist(path: Path, conf: object) -> Path:
    path.write_text(json.dumps(conf) if not isinstance(conf, str) else conf)
    return path


_GOOD_CONF = {
    "cniVersion": "1.0.0",
    "name": "vnfio",
    "plugins": [{"type": "vnfio", "mode": "bridge", "ipam": {"type": "host-local", "subnet": "10.99.0.0/16"}}],
}


def test_conflist_is_installed_only_when_asked(tmp_path: Path, bin_dir: Path) -> None:
    cni_bin = _fake_cni_bin(tmp_path, _GOOD)
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    conf = _conflist(tmp_path / "10-vnfio.conflist", _GOOD_CONF)

    # The DaemonSet passes `--conflist=$(VNFIO_CNI_CONFLIST)`, empty by default: nothing goes to net.d.
    done = _install("--cni-bin", cni_bin, "--cni-bin-dir", bin_dir, "--conflist=", "--cni-conf-dir", conf_dir)
    assert done.returncode == 0, done.stderr
    assert os.listdir(conf_dir) == []

    done = _install("--cni-bin", cni_bin, "--cni-bin-dir", bin_dir, "--conflist", conf, "--cni-conf-dir", conf_dir)
    assert done.returncode == 0, done.stderr
    assert os.listdir(conf_dir) == ["10-vnfio.conflist"]
    assert json.loads((conf_dir / "10-vnfio.conflist").read_text()) == _GOOD_CONF
    assert (conf_dir / "10-vnfio.conflist").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("10-vnfio.conflist", "{not json", "is not valid JSON"),
        ("10-vnfio.conflist", {"name": "x", "plugins": []}, 'non-empty "plugins"'),
        ("10-vnfio.conflist", {"plugins": [{"type": "vnfio"}]}, 'non-empty "name"'),
        ("vnfio.yaml", _GOOD_CONF, "runtimes only read"),
    ],
)
def test_bad_conflist_installs_nothing_at_all(
    tmp_path: Path, bin_dir: Path, name: str, content: object, why: str
) -> None:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    conf = _conflist(tmp_path / name, content)
    done = _install("--cni-bin", _fake_cni_bin(tmp_path, _GOOD), "--cni-bin-dir", bin_dir, "--conflist", conf,
                    "--cni-conf-dir", conf_dir)
    assert done.returncode == 1 and why in done.stderr
    assert os.listdir(bin_dir) == [] and os.listdir(conf_dir) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_read_only_bin_dir_is_a_clear_error(tmp_path: Path, bin_dir: Path) -> None:
    script = (
        f"mount --bind {bin_dir} {bin_dir} && mount -o remount,bind,ro {bin_dir} && "
        f"exec {sys.executable} -m cni.install --cni-bin {CNI_BIN} --cni-bin-dir {bin_dir}"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 1
    assert f"cannot write to {bin_dir}: Read-only file system" in done.stderr and "Traceback" not in done.stderr
    assert os.listdir(bin_dir) == []

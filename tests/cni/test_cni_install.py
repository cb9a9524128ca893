"""The CNI installer: the executable lands atomically in a CNI bin dir only after the host proved it can run it.

Scenarios run the installer as the init container does (`python -m cni.install ...`) and look at the bin dir the
way a container runtime would: by listing it and exec'ing what is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipapp
from pathlib import Path

import pytest
from repo import REPO

from cni.versions import version_info

_HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def _host_python() -> str:
    """An interpreter that is not our virtualenv's, the way a node's `python3` is not."""
    for candidate in ("/usr/bin/python3", getattr(sys, "_base_executable", "")):
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).resolve() != Path(sys.executable).resolve():
            return candidate
    pytest.skip("no Python outside the virtualenv to play the host's python3")


def _install(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cni.install", *map(str, args)], capture_output=True, text=True, cwd=REPO, check=False
    )


def _zipapp(tmp_path: Path, name: str, interpreter: str | None, main: str) -> Path:
    """A tiny stand-in for the real bundle, to drive the installer's failure paths."""
    source = tmp_path / f"{name}-src"
    source.mkdir()
    (source / "__main__.py").write_text(main)
    target = tmp_path / name
    zipapp.create_archive(source, target, interpreter=interpreter)
    return target


_VERSION_MAIN = (
    "import json, os\n"
    "assert os.environ['CNI_COMMAND'] == 'VERSION'\n"
    "print(json.dumps({'cniVersion': '1.1.0', 'supportedVersions': ['1.0.0', '1.1.0']}))\n"
)


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real self-contained executable, built the way the Dockerfile builds it."""
    out = tmp_path_factory.mktemp("bundle") / "vnfio"
    subprocess.run([sys.executable, "-m", "cni.bundle", str(out)], check=True, cwd=REPO, capture_output=True)
    return out


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "opt-cni-bin"
    path.mkdir()
    return path


def test_real_bundle_installs_and_runs_with_a_bare_host_python(real_bundle: Path, bin_dir: Path) -> None:
    host_python = _host_python()
    done = _install("--bundle", real_bundle, "--cni-bin-dir", bin_dir, "--host-python", host_python)
    assert done.returncode == 0, done.stderr
    installed = bin_dir / "vnfio"
    assert sorted(os.listdir(bin_dir)) == ["vnfio"]
    assert installed.stat().st_mode & 0o777 == 0o755
    assert installed.read_bytes() == real_bundle.read_bytes()

    # That interpreter has no vnfio of its own: whatever runs below comes from the single installed file.
    bare = subprocess.run([host_python, "-I", "-S", "-c", "import cni"], capture_output=True, env=_HOST_ENV)
    assert bare.returncode != 0
    for argv in ([host_python, "-I", str(installed)], [host_python, "-I", "-S", str(installed)], [str(installed)]):
        out = subprocess.run(
            argv,
            input='{"cniVersion": "1.0.0"}',
            capture_output=True,
            text=True,
            env={**_HOST_ENV, "CNI_COMMAND": "VERSION"},
        )
        assert out.returncode == 0, (argv, out.stderr)
        answer = json.loads(out.stdout)
        assert answer["supportedVersions"] == version_info()["supportedVersions"]
    assert "host check" in done.stderr


def test_self_made_zipapp_installs_with_both_checks(tmp_path: Path, bin_dir: Path) -> None:
    host_python = _host_python()
    bundle = _zipapp(tmp_path, "app", f"{host_python} -I", _VERSION_MAIN)
    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir, "--host-python", host_python)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(bin_dir)) == ["vnfio"]
    assert f"via its #! line, {host_python}: CNI 1.1.0" in done.stderr
    assert f"{host_python} -I: CNI 1.1.0" in done.stderr


def test_host_python_that_fails_leaves_no_file(tmp_path: Path, bin_dir: Path) -> None:
    bundle = _zipapp(tmp_path, "app", f"{_host_python()} -I", _VERSION_MAIN)
    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir, "--host-python", "/bin/false")
    assert done.returncode == 1
    assert "error: not installing" in done.stderr and "/bin/false -I" in done.stderr and "exit status 1" in done.stderr
    assert os.listdir(bin_dir) == []


def test_shebang_naming_a_missing_interpreter_leaves_no_file(tmp_path: Path, bin_dir: Path) -> None:
    bundle = _zipapp(tmp_path, "app", "/nonexistent/python3 -I", _VERSION_MAIN)
    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir)
    assert done.returncode == 1
    assert "is /nonexistent/python3 there?" in done.stderr
    assert os.listdir(bin_dir) == []


def test_file_without_shebang_is_refused(tmp_path: Path, bin_dir: Path) -> None:
    bundle = _zipapp(tmp_path, "app", None, _VERSION_MAIN)
    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir)
    assert done.returncode == 1
    assert "no '#!' line" in done.stderr
    assert os.listdir(bin_dir) == []


def test_version_answer_that_is_not_cni_json_is_refused(tmp_path: Path, bin_dir: Path) -> None:
    bundle = _zipapp(tmp_path, "app", f"{_host_python()} -I", "print('hello')\n")
    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir)
    assert done.returncode == 1
    assert "did not answer CNI JSON: 'hello'" in done.stderr
    assert os.listdir(bin_dir) == []


def test_upgrade_that_fails_its_check_keeps_the_running_version(tmp_path: Path, bin_dir: Path) -> None:
    good = _zipapp(tmp_path, "good", f"{_host_python()} -I", _VERSION_MAIN)
    assert _install("--bundle", good, "--cni-bin-dir", bin_dir).returncode == 0
    bad = _zipapp(tmp_path, "bad", f"{_host_python()} -I", "raise SystemExit('broken build')\n")
    done = _install("--bundle", bad, "--cni-bin-dir", bin_dir)
    assert done.returncode == 1 and "broken build" in done.stderr
    assert sorted(os.listdir(bin_dir)) == ["vnfio"]
    assert (bin_dir / "vnfio").read_bytes() == good.read_bytes()


def test_missing_bin_dir_or_bundle_is_a_clear_error(tmp_path: Path, bin_dir: Path) -> None:
    bundle = _zipapp(tmp_path, "app", f"{_host_python()} -I", _VERSION_MAIN)
    done = _install("--bundle", bundle, "--cni-bin-dir", tmp_path / "nope")
    assert done.returncode == 1 and "CNI bin dir" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "nope").exists()
    done = _install("--bundle", tmp_path / "missing", "--cni-bin-dir", bin_dir)
    assert done.returncode == 1 and "cannot read the CNI executable" in done.stderr
    assert os.listdir(bin_dir) == []


def _conflist(path: Path, conf: object) -> Path:
    path.write_text(json.dumps(conf) if not isinstance(conf, str) else conf)
    return path


_GOOD_CONF = {
    "cniVersion": "1.0.0",
    "name": "vnfio",
    "plugins": [{"type": "vnfio", "mode": "bridge", "ipam": {"type": "host-local", "subnet": "10.99.0.0/16"}}],
}


def test_conflist_is_installed_only_when_asked(tmp_path: Path, bin_dir: Path) -> None:
    bundle = _zipapp(tmp_path, "app", f"{_host_python()} -I", _VERSION_MAIN)
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    conf = _conflist(tmp_path / "10-vnfio.conflist", _GOOD_CONF)

    # The DaemonSet passes `--conflist=$(VNFIO_CNI_CONFLIST)`, empty by default: nothing goes to net.d.
    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir, "--conflist=", "--cni-conf-dir", conf_dir)
    assert done.returncode == 0, done.stderr
    assert os.listdir(conf_dir) == []

    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir, "--conflist", conf, "--cni-conf-dir", conf_dir)
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
    bundle = _zipapp(tmp_path, "app", f"{_host_python()} -I", _VERSION_MAIN)
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    conf = _conflist(tmp_path / name, content)
    done = _install("--bundle", bundle, "--cni-bin-dir", bin_dir, "--conflist", conf, "--cni-conf-dir", conf_dir)
    assert done.returncode == 1 and why in done.stderr
    assert os.listdir(bin_dir) == [] and os.listdir(conf_dir) == []


def test_host_root_without_python_fails_the_check_inside_it(tmp_path: Path) -> None:
    """The init container sees the host's / under /host: the check must run there, not in the image."""
    host = tmp_path / "host"
    (host / "opt/cni/bin").mkdir(parents=True)
    bundle = _zipapp(tmp_path, "app", f"{_host_python()} -I", _VERSION_MAIN)
    done = _install("--bundle", bundle, "--host-root", host, "--cni-bin-dir", "/opt/cni/bin")
    assert done.returncode == 1
    assert "not installing /opt/cni/bin/vnfio" in done.stderr and "there?" in done.stderr
    assert os.listdir(host / "opt/cni/bin") == []


def _confined_install(tmp_path: Path, bounding: str, host_python: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The init container's view: the host's / read-only at `host`, only the CNI bin dir writable on top of it,
    our own root read-only too, and root holding only the capabilities in `bounding`."""
    bundle = _zipapp(tmp_path, "app", f"{host_python} -I", _VERSION_MAIN)
    host = tmp_path / "host"
    host.mkdir()
    bin_dir = tmp_path / "opt-cni-bin"
    bin_dir.mkdir()
    script = (
        f"mount --rbind / {host} && mount -o remount,bind,ro {host} && mount --bind {bin_dir} {host}{bin_dir} && "
        f"mount -o remount,bind,ro / && exec setpriv --bounding-set {bounding} --inh-caps -all "
        f"{sys.executable} -m cni.install --bundle {bundle} --host-root {host} --cni-bin-dir {bin_dir} "
        f"--host-python {host_python}"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**_HOST_ENV, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert os.listdir(host) == []  # the mounts died with their namespace
    return done, bin_dir


_NEEDS = pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("setpriv")), reason="needs util-linux")


@_NEEDS
def test_host_root_mounted_elsewhere_is_checked_chrooted_with_only_sys_chroot(tmp_path: Path) -> None:
    """The DaemonSet layout, and the one capability its init container adds."""
    done, bin_dir = _confined_install(tmp_path, "-all,+sys_chroot", _host_python())
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(bin_dir)) == ["vnfio"]


@_NEEDS
def test_without_sys_chroot_the_check_fails_clearly_and_installs_nothing(tmp_path: Path) -> None:
    done, bin_dir = _confined_install(tmp_path, "-all", _host_python())
    assert done.returncode == 1
    assert "chroot needs CAP_SYS_CHROOT" in done.stderr and "Traceback" not in done.stderr
    assert os.listdir(bin_dir) == []


@_NEEDS
def test_read_only_bin_dir_is_a_clear_error(tmp_path: Path, bin_dir: Path) -> None:
    bundle = _zipapp(tmp_path, "app", f"{_host_python()} -I", _VERSION_MAIN)
    script = (
        f"mount --bind {bin_dir} {bin_dir} && mount -o remount,bind,ro {bin_dir} && "
        f"exec {sys.executable} -m cni.install --bundle {bundle} --cni-bin-dir {bin_dir}"
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

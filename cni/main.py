"""The `vnfio` CNI executable: the start-up path kubelet's runtime execs for every pod.

It imports only the standard library and what the command at hand needs, because every import here is
paid on every pod start (see the README's performance section). ADD, DEL, CHECK, GC and STATUS go to the
node daemon through `cni.client` (built-in modules only) and run in-process only when no daemon takes them.
"""

from __future__ import annotations

import posix
import sys

_HELP = """usage: vnfio            (run by a container runtime as a CNI plugin)

The vnfio CNI plugin (type "vnfio"): wires a pod network namespace as a veth pair, a macvlan or a veth
into a bridge, with host-local, static or delegated IPAM. It speaks CNI 1.1.0 and 1.0.0 (results
converted to 0.3.x/0.4.0 on request). Parameters come from CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME, CNI_ARGS and CNI_PATH; the network configuration from standard input; the result goes to
standard output. Try: CNI_COMMAND=VERSION vnfio

The work is done by the node daemon vnfio-cni-daemon when it listens on /run/vnfio/cni.sock (override with
VNFIO_CNI_SOCKET); without it, the same code runs in this process. VNFIO_CNI_TIMEOUT (seconds, default 5)
bounds how long the daemon may take to accept a request before this process does the work itself.
"""


def main(archive: str | None = None) -> int:
    """Dispatch one CNI invocation and return the process exit code.

    `archive` is set by the bundled host executable: its own path, the zip holding the `cni` package.
    """
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        sys.stdout.write(_HELP)
        return 0
    command = posix.environ.get(b"CNI_COMMAND", b"").decode(errors="replace")
    if command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        from cni.client import run

        return run(command, archive)
    if not command:
        from cni.versions import SUPPORTED

        sys.stderr.write(f"vnfio CNI plugin, supports CNI versions {', '.join(SUPPORTED)}\n")
        return 0
    # VERSION (and unknown commands, which the skeleton rejects with code 4): cheap, no daemon needed.
    import os

    from cni.skel import execute

    code, out = execute(dict(os.environ), sys.stdin.buffer.read())
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())

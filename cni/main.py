"""The `vnfio` CNI executable: the start-up path kubelet's runtime execs for every pod.

It imports only the standard library and what the command at hand needs, because every import here is
paid on every pod start (see the README's performance section).
"""

from __future__ import annotations

import os
import sys

_HELP = """usage: vnfio            (run by a container runtime as a CNI plugin)

The vnfio CNI plugin (type "vnfio"): wires a pod network namespace as a veth pair, a macvlan or a veth
into a bridge, with host-local, static or delegated IPAM. It speaks CNI 1.1.0 and 1.0.0 (results
converted to 0.3.x/0.4.0 on request). Parameters come from CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME, CNI_ARGS and CNI_PATH; the network configuration from standard input; the result goes to
standard output. Try: CNI_COMMAND=VERSION vnfio
"""


def main() -> int:
    """Dispatch one CNI invocation and return the process exit code."""
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        sys.stdout.write(_HELP)
        return 0
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        import json

        from cni.versions import version_info

        sys.stdout.write(json.dumps(version_info()) + "\n")
        return 0
    if not command:
        from cni.versions import SUPPORTED

        sys.stderr.write(f"vnfio CNI plugin, supports CNI versions {', '.join(SUPPORTED)}\n")
        return 0
    from cni.skel import execute

    code, out = execute(dict(os.environ), sys.stdin.buffer.read())
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())

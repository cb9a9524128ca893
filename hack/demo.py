#!/usr/bin/env python3
"""The demo behind `make demo`: vnfio end to end on a generated board, with no hardware and no kubelet.

1. builds the full sample LX2160A board (DPAA2 containers, vfio-pci VFs, SoC platform devices, vhost-net, VFIO
   cdevs) in a temporary folder;
2. lists the inventory the way an operator's dry run does;
3. starts the device plugin daemon against it and a kubelet stand-in (the one the tests use), and shows what
   kubelet sees;
4. allocates one device of each pool for an example pod and prints what the pod would get (device nodes, env,
   and with `--cdi-dir DIR` the CDI device names and the specs written there);
5. runs the DRA driver (`vnfio-dra-driver --sample-board`) against a kubelet stand-in (plugin manager and DRA
   manager) and an API server stand-in: shows the ResourceSlice it publishes, prepares a claim for a DPAA2
   container and one for two VFs, prints what their CDI specs give the container, and unprepares them;
6. wires two network namespaces with the `vnfio` CNI plugin (the static executable a node runs) in bridge mode
   through its node daemon, pings between them and to the gateway, and deletes them again.

Every step prints what it does. Everything it creates (folders, namespaces, links, processes) is removed
before it exits, also on failure; the last step checks that nothing is left. Needs root (namespaces, links).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the kubelet stand-in and the netns/ping helpers the tests use

BIN = Path(sys.executable).parent
EXAMPLE_POD = {"nxp.com/dpaa2_dprc": 1, "intel.com/intel_vf": 2, "nxp.com/soc_platform": 1, "vnfio.io/vhost_net": 1}


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(text: str) -> None:
    print("    " + text.replace("\n", "\n    "), flush=True)


@contextlib.contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A background process whose output goes to `log`, stopped with SIGTERM (then SIGKILL) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def device_plugin_part(tmp: Path, cdi_dir: Path | None) -> None:
    from kubelet_stub import KubeletStub

    from deviceplugin.policy.config import SAMPLE_BOARD_CONFIG
    from deviceplugin.sampleboard import full_sample_board

    step("Build the sample LX2160A board: a kernel-owned dprc.1, vfio-bound dprc.2/dprc.3, an unbound dprc.4,")
    show("an i40e PF with four vfio-pci VFs (two of them share IOMMU group 22), SoC devices on vfio-platform and")
    show("vfio-amba (two I2C controllers share group 31), /dev/vhost-net, /dev/net/tun, /dev/iommu and VFIO cdevs")
    board = full_sample_board(tmp / "board")
    config = tmp / "config.json"
    config.write_text(json.dumps(SAMPLE_BOARD_CONFIG, indent=2))
    show(f"sysfs root {board.sys}, dev root {board.dev}, config {config}")

    step("Dry run: vnfio-device-plugin list (what would be advertised, and what is left out and why)")
    roots = ["--config", str(config), "--sysfs-root", str(board.sys), "--dev-root", str(board.dev)]
    listing = subprocess.run([BIN / "vnfio-device-plugin", "list", *roots], capture_output=True, text=True)
    show(listing.stdout.rstrip())
    if listing.returncode != 0:
        raise RuntimeError(f"list failed: {listing.stderr}")

    plugin_dir = tmp / "device-plugins"
    plugin_dir.mkdir()
    step(f"Start a kubelet stand-in on {plugin_dir}/kubelet.sock and the device plugin daemon")
    with KubeletStub(plugin_dir) as kubelet:  # starts it: deletes stale sockets, serves kubelet.sock
        args = [BIN / "vnfio-device-plugin", *roots, "--plugin-dir", str(plugin_dir), "--no-uevents",
                "--device-info-dir", str(tmp / "devinfo")]  # fmt: skip
        if cdi_dir is not None:
            args += ["--cdi-dir", str(cdi_dir)]
        with process([str(a) for a in args], tmp / "device-plugin.log") as daemon:
            for resource in EXAMPLE_POD:
                reg = kubelet.wait_registered(resource, timeout=30)
                devices = kubelet.wait_for(resource, lambda devs: bool(devs), timeout=30)
                health = ", ".join(f"{i} ({d.health})" for i, d in sorted(devices.items()))
                show(f"kubelet: {resource} registered on {reg.endpoint}: {health}")

            step(f"Allocate for an example pod with limits {EXAMPLE_POD}")
            for resource, count in EXAMPLE_POD.items():
                available = sorted(kubelet.devices(resource))
                chosen = kubelet.preferred(resource, available, [], count)
                answer = kubelet.allocate(resource, chosen)
                show(f"{resource}: GetPreferredAllocation chose {chosen}")
                for spec in answer.devices:
                    show(f"  device {spec.host_path} -> {spec.container_path} ({spec.permissions})")
                for key, value in sorted(answer.envs.items()):
                    show(f"  env    {key}={value}")
                for cdi in answer.cdi_devices:
                    show(f"  CDI    {cdi.name}")
            if cdi_dir is not None:
                specs = sorted(p.name for p in cdi_dir.glob("vnfio-*.json"))
                show(f"CDI specs in {cdi_dir}: {', '.join(specs)}")
            infos = sorted(p.name for p in (tmp / "devinfo").glob("*-device.json"))
            show(f"device-info files for Multus: {', '.join(infos) or 'none'}")

            step("Stop the device plugin (SIGTERM): it ends its streams and removes its sockets")
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(15)
            left = sorted(p.name for p in plugin_dir.iterdir() if p.name != "kubelet.sock")
            show(f"exit code {code}; plugin sockets left: {left or 'none'}")
            if code != 0 or left:
                raise RuntimeError("the device plugin did not shut down cleanly")


def dra_part(tmp: Path) -> None:
    from apiserver_stub import ApiServerStub
    from dra_harness import write_kubeconfig
    from dra_kubelet_stub import DraKubeletStub, wait_until
    from dra_scenarios import DRIVER, NODE, allocated_claim, container_view

    step("DRA: an API server stand-in, a kubelet stand-in watching plugins_registry, and vnfio-dra-driver")
    registry, plugins, cdi = tmp / "plugins_registry", tmp / "plugins", tmp / "cdi"
    apiserver = ApiServerStub(nodes=(NODE,)).start()
    try:
        kubeconfig = write_kubeconfig(tmp / "kubeconfig", apiserver.url)
        with DraKubeletStub(registry) as kubelet:
            args = [BIN / "vnfio-dra-driver", "--sample-board", "--node-name", NODE, "--kubeconfig", kubeconfig,
                    "--plugins-registry-dir", registry, "--plugins-dir", plugins, "--cdi-dir", cdi, "--no-uevents"]
            with process([str(a) for a in args], tmp / "dra-driver.log") as driver:
                plugin = kubelet.wait_registered(DRIVER, timeout=30)
                show(f"kubelet: registered DRA driver {plugin.name} ({plugin.version}) at {plugin.endpoint}")
                if not wait_until(lambda: bool(apiserver.slice_list()), timeout=15):
                    raise RuntimeError("no ResourceSlice was published")
                (published,) = apiserver.slice_list()
                spec = published["spec"]
                show(f"ResourceSlice {published['metadata']['name']}: pool {spec['pool']}")
                for device in spec["devices"]:
                    attrs = ", ".join(f"{k}={next(iter(v.values()))}" for k, v in device["attributes"].items())
                    show(f"  {device['name']}: {attrs}")

                claims = {
                    "uid-dpdk": allocated_claim("dpdk", "uid-dpdk", [("dprc", "dprc-2")]),
                    "uid-vfs": allocated_claim(
                        "vfs", "uid-vfs", [("vf", "pci-0001-01-00-1"), ("vf", "pci-0001-01-00-2")]
                    ),
                }
                for claim in claims.values():
                    apiserver.put_claim(claim)
                refs = [("default", c["metadata"]["name"], uid) for uid, c in claims.items()]
                step("DRA: kubelet prepares a claim for one DPAA2 container and one for two VFs")
                answers = kubelet.prepare(DRIVER, refs)
                for uid, answer in answers.items():
                    if answer.error:
                        raise RuntimeError(f"prepare {uid}: {answer.error}")
                    ids = [i for d in answer.devices for i in d["cdiDeviceIDs"]]
                    show(f"claim {uid}: CDI devices {ids}")
                    env, nodes = container_view(cdi / f"vnfio-{DRIVER}-vfio-{uid}.json", ids)
                    for container_path, host_path, permissions in sorted(nodes):
                        show(f"  device {host_path} -> {container_path} ({permissions})")
                    for key, value in sorted(env.items()):
                        show(f"  env    {key}={value}")
                step("DRA: kubelet unprepares them; the driver removes the CDI specs and stops on SIGTERM")
                errors = kubelet.unprepare(DRIVER, refs)
                show(f"unprepare errors: {errors}; CDI specs left: {sorted(p.name for p in cdi.iterdir()) or 'none'}")
                driver.send_signal(signal.SIGTERM)
                code = driver.wait(15)
                show(f"exit code {code}")
                if code != 0 or any(errors.values()):
                    raise RuntimeError("the DRA driver did not finish cleanly")
    finally:
        apiserver.stop()


def cni_part(tmp: Path) -> None:
    from cni_helpers import Netns, ping

    tag = secrets.token_hex(2)
    bridge = f"vnfdemo{tag}"
    subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    conf = {
        "cniVersion": "1.1.0",
        "name": f"vnfio-demo-{tag}",
        "type": "vnfio",
        "mode": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": f"{subnet}.0/24"}]], "dataDir": str(tmp / "ipam")},
    }
    sock = tmp / "cni" / "cni.sock"
    step(f"Start the CNI node daemon on {sock} (pyroute2 loaded once, not per pod)")
    with process(
        [str(BIN / "vnfio-cni-daemon"), "--socket", str(sock)], tmp / "cni-daemon.log"
    ) as cni_daemon, contextlib.ExitStack() as stack:
        for _ in range(200):
            if sock.exists() or cni_daemon.poll() is not None:
                break
            time.sleep(0.05)
        if not sock.exists():
            raise RuntimeError("the CNI daemon did not start; see its log")
        pods = [Netns(name=f"vnfio-demo-{tag}-{i}").create() for i in (1, 2)]
        for ns in pods:
            stack.callback(ns.close)
        stack.callback(lambda: subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False))
        base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_PATH": "/opt/cni/bin",
            "CNI_IFNAME": "eth0",
            "VNFIO_CNI_SOCKET": str(sock),
        }

        # What a node runs: the static executable `make cni-bin` built; the venv's Python one if it is not there.
        static = REPO / "build" / "cni-bin" / "vnfio"
        plugin = static if static.exists() else BIN / "vnfio"
        print(f"    the runtime's exec: {plugin}")

        def cni(command: str, ns: Netns, prev: dict[str, object] | None = None) -> dict[str, object]:
            """One exec of the plugin as a runtime makes it; CHECK and DEL carry the ADD result as prevResult."""
            env = dict(base_env, CNI_COMMAND=command, CNI_CONTAINERID=ns.name, CNI_NETNS=ns.path)
            request = dict(conf, prevResult=prev) if prev else conf
            out = subprocess.run(
                [str(plugin)], input=json.dumps(request), env=env, capture_output=True, text=True
            )
            if out.returncode != 0:
                raise RuntimeError(f"vnfio {command} failed: {out.stdout}{out.stderr}")
            return json.loads(out.stdout) if out.stdout.strip() else {}

        step(f"CNI ADD: two pods on bridge {bridge} ({subnet}.0/24, gateway on the bridge)")
        addresses, results = [], []
        for ns in pods:
            result = cni("ADD", ns)
            results.append(result)
            ips = [ip["address"] for ip in result["ips"]]  # type: ignore[index]
            addresses.append(ips[0].split("/")[0])
            show(f"{ns.name}: eth0 {', '.join(ips)}")
        step("Ping pod 1 -> pod 2 and pod 1 -> gateway")
        for target in (addresses[1], f"{subnet}.1"):
            ok = ping(pods[0], target)
            show(f"ping {target}: {'reply' if ok else 'NO REPLY'}")
            if not ok:
                raise RuntimeError(f"no reply from {target}")
        step("CNI CHECK and DEL for both pods")
        for ns, result in zip(pods, results, strict=True):
            cni("CHECK", ns, result)
            cni("DEL", ns, result)
            # The daemon answers DEL once the link is retired (down, renamed) and deletes it right after.
            deadline = time.monotonic() + 5
            while set(ns.links()) != {"lo"} and time.monotonic() < deadline:
                time.sleep(0.01)
            show(f"{ns.name}: CHECK ok, DEL ok; links left in the pod: {sorted(ns.links())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vnfio end to end on a generated board")
    parser.add_argument("--cdi-dir", type=Path, default=None, help="let the device plugin write CDI specs here")
    parser.add_argument("--device-plugin-only", action="store_true", help="skip the CNI part")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 and not args.device_plugin_only:
        print("the demo needs root: it creates network namespaces and links", file=sys.stderr)
        return 1
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    with tempfile.TemporaryDirectory(prefix="vnfio-demo-", dir="/tmp") as name:
        tmp = Path(name)
        try:
            device_plugin_part(tmp, args.cdi_dir)
            if not args.device_plugin_only:
                dra_part(tmp)
                cni_part(tmp)
        except Exception as exc:
            print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
            for log in sorted(tmp.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
            return 1
    step("Clean-up check")
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    leftovers = sorted(n for n in after - before if n.startswith("vnfio-demo-"))
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    stray_links = [line.split(":")[1].strip() for line in links.splitlines() if "vnfdemo" in line]
    show(f"namespaces left: {leftovers or 'none'}; demo links left: {stray_links or 'none'}; temp folder removed")
    return 1 if leftovers or stray_links else 0


if __name__ == "__main__":
    sys.exit(main())

"""The config as an attacker or a careless operator writes it: trailing newlines that `$` lets through, a YAML
alias bomb, an oversized file, and error messages that would quote all of it (issue 17, findings 4 and 11)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_configwatch import ConfigMapVolume
from test_daemon_lifecycle import (
    DPRC,
    DPRC_POOL,
    PLUGIN,
    VF,
    VF_POOL,
    free_port,
    registered_everything,
    scrape,
    wait_until,
)

from deviceplugin.policy.config import MAX_CONFIG_BYTES, ConfigError, load_config, parse_config

if TYPE_CHECKING:
    from kubelet_stub import KubeletStub

    from deviceplugin.sampleboard import SampleBoard

pytestmark = pytest.mark.hardening

GOOD = {"resourceName": "good", "deviceType": "pci", "selectors": {"vendors": ["8086"]}}


@pytest.mark.parametrize(
    ("entry", "pool", "key"),
    [
        ({"resourceName": "x\n", "deviceType": "pci"}, "x\n", "resourceName"),
        ({"resourceName": "vf", "resourcePrefix": "example.com\n", "deviceType": "pci"}, "vf", "resourcePrefix"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"drivers": ["vfio-pci\n"]}}, "vf",
         "selectors.drivers"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"vendors": ["8086\n"]}}, "vf", "selectors.vendors"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"pciAddresses": ["0000:01:00.1\n"]}}, "vf",
         "selectors.pciAddresses"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"pfNames": ["eth0\n"]}}, "vf", "selectors.pfNames"),
        ({"resourceName": "dprc", "deviceType": "fslmc", "selectors": {"containers": ["dprc.2\n"]}}, "dprc",
         "selectors.containers"),
    ],
)  # fmt: skip
def test_a_trailing_newline_is_refused(entry: dict[str, Any], pool: str, key: str) -> None:
    """`$` matches before a final newline, so "x\\n" passed as a resource name, a prefix or a selector value."""
    result = parse_config({"resourceList": [GOOD, entry]})
    assert [p.name for p in result.pools] == ["good"]
    assert [(p.pool, p.key) for p in result.problems] == [(pool, key)]
    assert "\\n" in result.problems[0].reason  # the message shows the newline it refused


# ----------------------------------------------------------------------------------- size and expansion
def alias_bomb(levels: int, width: int = 9) -> str:
    """"Billion laughs": each level is `width` aliases of the one below; `resourceList` is the top level, so
    the pools are lists of lists of … and every problem message would quote one of them in full."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    lines.append(f"resourceList: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(alias_bomb(10))  # 9**10 strings: ~3.5e9 if anything walked it
    assert len(path.read_bytes()) < 600
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "alias bomb" in message
    assert len(message) < 1000


def test_self_containing_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("a: &a [*a]\nresourceList: []\n")
    with pytest.raises(ConfigError, match="expand to more than"):
        load_config(path)


def test_anchors_that_share_selectors_still_work(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "common: &intel {vendors: ['8086'], drivers: [vfio-pci]}\n"
        "resourceList:\n"
        "  - {resourceName: a, deviceType: pci, selectors: *intel}\n"
        "  - {resourceName: b, resourcePrefix: example.com, deviceType: pci, selectors: *intel}\n"
    )
    result = load_config(path)
    assert result.problems == ()
    assert [p.resource_name for p in result.pools] == ["vnfio.io/a", "example.com/b"]


def test_oversized_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"resourceList": []}' + " " * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(path)
    path.write_text('{"resourceList": []}'.ljust(MAX_CONFIG_BYTES))  # exactly the limit is fine
    assert load_config(path).pools == ()


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    for text in ("[" * 200_000, "- " * 200_000):
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"nested too deeply|YAML"):
            load_config(path)


def test_messages_quote_a_few_hundred_characters_at_most() -> None:
    huge = "x" * 100_000
    result = parse_config(
        {
            "resourceList": [
                {"resourceName": huge, "deviceType": "pci", huge: 1},
                {"resourceName": "vf", "deviceType": "pci", "selectors": {"drivers": [huge + " y"]}},
                [huge] * 100,
            ]
        }
    )
    assert len(result.problems) == 4
    for problem in result.problems:
        assert len(str(problem)) < 2000
    assert "… (" in str(result.problems[0])
    assert "more characters)" in str(result.problems[0])
    with pytest.raises(ConfigError) as error:
        parse_config({"resourceList": {"x": [huge] * 100}})
    assert len(str(error.value)) < 2000
    assert str(error.value).endswith("more characters)")


# ------------------------------------------------------------------------------- through the running daemon
def _peak_rss_kib(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def test_alias_bomb_reload_keeps_the_pools_and_memory_bounded(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    """Issue 17, finding 4, through `vnfio-device-plugin` as the DaemonSet runs it: the bomb arrives as a new
    config; the reload is refused with a short log line, the running pools keep serving, memory stays put."""
    volume = ConfigMapVolume(tmp_path / "configmap")
    volume.publish({"resourceList": [DPRC_POOL, VF_POOL]})
    port = free_port()
    args = [
        "--config", str(volume.path), "--sysfs-root", str(board.sys), "--dev-root", str(board.dev),
        "--plugin-dir", str(plugin_dir), "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--no-uevents",
        "--device-info-dir", "",  # never the node's /var/run: tests leave the host alone
    ]  # fmt: skip
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([PLUGIN, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        registered_everything(kubelet)
        wait_until(lambda: scrape(port, "/readyz")[0] == 200, "readiness")
        before = _peak_rss_kib(process.pid)
        # 9 pools, each a list of 9**6 strings: the old loader quoted each in full (~3.7 MB a line, ~100 MB).
        volume.publish_text(alias_bomb(8))
        wait_until(lambda: 'vnfio_config_reloads_total{result="failure"} 1.0' in scrape(port, "/metrics")[1],
                   "the bomb to be rejected", timeout=120)  # fmt: skip
        after = _peak_rss_kib(process.pid)
        assert process.poll() is None
        assert kubelet.allocate(VF, ["0001:01:00.1"]).envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1"
        assert kubelet.allocate(DPRC, ["dprc.2"]).envs["DPRC"] == "dprc.2"
        assert scrape(port, "/readyz") == (200, "ok\n")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = log_path.read_text().splitlines()
    longest = max(len(line) for line in lines)
    rejected = [line for line in lines if "new config rejected" in line]
    print(f"FIGURE alias bomb reload: peak RSS {before} KiB before, {after} KiB after (+{after - before} KiB); "
          f"longest log line {longest} characters")  # fmt: skip
    assert len(rejected) == 1
    assert "alias bomb" in rejected[0]
    assert longest < 2000
    assert after - before < 20 * 1024

"""The pool configuration: a `resourceList` (JSON or YAML) turned into validated `PoolConfig`s.

A bad pool costs only itself: every problem names the pool, the key and the reason, and the valid pools
still run. Only a file that cannot be read or parsed at all, or has no `resourceList`, is fatal.

The file is untrusted input to a node component: it is read up to MAX_CONFIG_BYTES, its YAML may expand to at
most MAX_CONFIG_NODES nodes (anchors and aliases are allowed, but an alias bomb is refused before anything is
built from it), and every message quotes at most a few hundred characters of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deviceplugin.kinds import KINDS
from deviceplugin.policy.selectors import MAX_QUOTE, cut, show
from deviceplugin.records import env_suffix

DEFAULT_PREFIX = "vnfio.io"
IOMMU_GROUP_MODES = ("whole", "exclude")
# Keys every pool takes; each kind adds its own (DeviceKind.pool_keys), so this module has no per-kind branch.
POOL_KEYS = ("resourceName", "resourcePrefix", "deviceType", "selectors", "iommuGroups", "needVhostNet")

MAX_CONFIG_BYTES = 1 << 20  # a real resourceList is a few KiB; 1 MiB leaves room and bounds what a reload reads
MAX_CONFIG_NODES = 100_000  # YAML nodes after expanding every alias (a real config has hundreds)

# kubelet's extended resource name rules: a DNS-subdomain prefix and a qualified-name part.
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")

SAMPLE_CONFIG: dict[str, Any] = {
    "resourceList": [
        {
            "resourceName": "dpaa2_dprc",
            "resourcePrefix": "nxp.com",
            "deviceType": "fslmc",
            "selectors": {"drivers": ["vfio-fsl-mc"], "minObjects": {"dpni": 1, "dpio": 1, "dpbp": 1, "dpmcp": 1}},
        },
        {
            "resourceName": "intel_vf",
            "resourcePrefix": "intel.com",
            "deviceType": "pci",
            "selectors": {"vendors": ["8086"], "devices": ["154c"], "drivers": ["vfio-pci"]},
        },
    ]
}


# What `--sample-board` runs without a config file: the issue example above plus a platform pool (SoC devices on
# vfio-platform / vfio-amba; the eSDHC is named by its compatible but kernel-owned, so `list` shows why it is left
# out) and a vhost-net pool, so every kind the plugin knows shows up on the full sample board.
SAMPLE_BOARD_CONFIG: dict[str, Any] = {
    "resourceList": [
        *SAMPLE_CONFIG["resourceList"],
        {
            "resourceName": "soc_platform",
            "resourcePrefix": "nxp.com",
            "deviceType": "platform",
            "selectors": {
                "drivers": ["vfio-platform", "vfio-amba"],
                "compatibles": ["fsl,lx2160a-ahci", "fsl,lx2160a-i2c", "fsl,esdhc", "arm,pl011"],
            },
        },
        {
            "resourceName": "vhost_net",
            "resourcePrefix": "vnfio.io",
            "deviceType": "vhost-net",
            "count": 8,
        },
    ]
}


class ConfigError(Exception):
    """The configuration as a whole is unusable (unreadable, unparsable, or without a resourceList).

    The message is cut to a few hundred characters: it is logged, and the file is whatever someone wrote."""

    def __init__(self, message: str) -> None:
        super().__init__(cut(message, 4 * MAX_QUOTE))


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with one pool; the pool is dropped, the others still run."""

    pool: str
    key: str
    reason: str

    def __post_init__(self) -> None:
        # Pool labels and keys come from the file: quote them within bounds like any other value.
        object.__setattr__(self, "pool", cut(self.pool))
        object.__setattr__(self, "key", cut(self.key))
        object.__setattr__(self, "reason", cut(self.reason, 4 * MAX_QUOTE))

    def __str__(self) -> str:
        return f'pool "{self.pool}": key "{self.key}": {self.reason}'


@dataclass(frozen=True)
class PoolConfig:
    """One valid pool of the configuration."""

    name: str
    prefix: str
    device_type: str  # the kind's name (deviceType): a key of deviceplugin.kinds.KINDS
    selectors: Any  # the kind's selectors dataclass
    iommu_groups: str = "whole"  # kinds with multi-device groups: one device ("whole") or left out ("exclude")
    need_vhost_net: bool = False  # its containers also get /dev/vhost-net and /dev/net/tun (sriov-dp's key)
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # the kind's own pool keys, parsed

    @property
    def resource_name(self) -> str:
        return f"{self.prefix}/{self.name}"


@dataclass(frozen=True)
class ConfigResult:
    pools: tuple[PoolConfig, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()


def load_config(path: Path) -> ConfigResult:
    """Read and validate a config file; JSON or YAML, told apart by content."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file's size (a FIFO, /dev/zero)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path}: larger than {MAX_CONFIG_BYTES} bytes; not read further")
        text = raw.decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        data = _parse_text(text)
    except ValueError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def _parse_text(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_exc:
        if text.lstrip().startswith("{"):
            # Looks like JSON: its parser's message points at the real mistake.
            raise ValueError(f"not valid JSON: {json_exc}") from json_exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    try:
        return yaml.load(text, Loader=_BoundedYamlLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise ValueError(f"neither JSON nor YAML: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


class _BoundedYamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document expanding to more than MAX_CONFIG_NODES nodes.

    Aliases are cheap for PyYAML (they share one node) but not for anything that walks the data: a 443-byte
    "billion laughs" file became a 122 MB log line and ~850 MB of memory. Anchors stay allowed (an operator may
    share selectors between pools); what is bounded is the size after expansion, computed on the composed node
    graph before any Python object is built, counting a shared node once per place it appears. Composing
    itself is bounded too: every node and alias event counts."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._composed = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self._composed += 1
        if self._composed > MAX_CONFIG_NODES:
            raise yaml.YAMLError(f"more than {MAX_CONFIG_NODES} YAML nodes")
        return super().compose_node(parent, index)

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        expanded = _expanded_size(node, MAX_CONFIG_NODES)
        if expanded > MAX_CONFIG_NODES:
            raise yaml.YAMLError(
                f"its aliases expand to more than {MAX_CONFIG_NODES} YAML nodes (an alias bomb?); refused"
            )
        return node


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes `root` stands for with every alias expanded; stops counting past `limit`. A node that
    contains itself (`&a [*a]`) expands without end: it counts as past the limit."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(child)] for child in _children(node)))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return limit + 1
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                return limit + 1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse_config(data: object) -> ConfigResult:
    """Validate already-parsed config data."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping with a resourceList, got {show(data)}")
    entries = data.get("resourceList")
    if not isinstance(entries, list):
        raise ConfigError(f'key "resourceList": expected a list of pools, got {show(entries)}')
    pools: list[PoolConfig] = []
    problems: list[ConfigProblem] = []
    for index, entry in enumerate(entries):
        pool, pool_problems = _parse_pool(index, entry)
        if pool is not None:
            pool_problems += _clashes(pool, pools)
        problems += pool_problems
        if pool is not None and not pool_problems:
            pools.append(pool)
    return ConfigResult(tuple(pools), tuple(problems))


def _label(index: int, entry: object) -> str:
    if isinstance(entry, Mapping) and isinstance(entry.get("resourceName"), str) and entry["resourceName"]:
        return entry["resourceName"]
    return f"resourceList[{index}]"


def _parse_pool(index: int, entry: object) -> tuple[PoolConfig | None, list[ConfigProblem]]:
    label = _label(index, entry)
    problems: list[ConfigProblem] = []

    def bad(key: str, reason: str) -> None:
        problems.append(ConfigProblem(label, key, reason))

    if not isinstance(entry, Mapping):
        bad("", f"expected a mapping with resourceName and deviceType, got {show(entry)}")
        return None, problems
    raw_type = entry.get("deviceType")
    kind = KINDS.get(raw_type) if isinstance(raw_type, str) else None
    for key in entry:
        if key in POOL_KEYS or (kind is not None and key in kind.pool_keys):
            continue
        takers = [k.name for k in KINDS.values() if key in k.pool_keys]
        if takers and kind is not None:
            bad(str(key), f"only for deviceType {' or '.join(takers)}, not {kind.name}")
        elif not takers:
            known = [*POOL_KEYS, *(kind.pool_keys if kind is not None else ())]
            bad(str(key), f"unknown key (expected one of {', '.join(known)})")

    name = entry.get("resourceName")
    if name is None:
        bad("resourceName", "required")
    elif not isinstance(name, str) or len(name) > 63 or not _NAME.match(name):
        bad(
            "resourceName",
            "expected up to 63 characters of letters, digits, '_', '-' and '.', "
            f"starting and ending with a letter or digit (kubelet's rule), got {show(name)}",
        )
    prefix = entry.get("resourcePrefix", DEFAULT_PREFIX)
    if (reason := _prefix_problem(prefix)) is not None:
        bad("resourcePrefix", reason)

    if raw_type is None:
        bad("deviceType", f"required ({' or '.join(KINDS)})")
    elif kind is None:
        bad("deviceType", f"expected {' or '.join(KINDS)}, got {show(raw_type)}")

    mode = entry.get("iommuGroups", "whole")
    if "iommuGroups" in entry and kind is not None and kind.iommu_groups_rule is not None:
        takers = " or ".join(k.name for k in KINDS.values() if k.iommu_groups_rule is None)
        bad("iommuGroups", f"only for deviceType {takers} ({kind.iommu_groups_rule})")
    elif mode not in IOMMU_GROUP_MODES:
        bad("iommuGroups", f"expected whole or exclude, got {show(mode)}")

    need_vhost_net = entry.get("needVhostNet", False)
    if not isinstance(need_vhost_net, bool):
        bad("needVhostNet", f"expected true or false, got {show(need_vhost_net)}")
    options = kind.parse_pool_keys(entry, bad) if kind is not None else {}

    selectors: object | None = None
    if kind is not None:
        raw_selectors = entry.get("selectors", {})
        if not isinstance(raw_selectors, Mapping):
            bad("selectors", f"expected a mapping of selector keys, got {show(raw_selectors)}")
        else:
            selectors = kind.parse_selectors(raw_selectors, bad)
    if problems or selectors is None or kind is None:
        return None, problems
    return PoolConfig(name, prefix, kind.name, selectors, mode, need_vhost_net is True, options), problems


def _prefix_problem(prefix: object) -> str | None:
    if not isinstance(prefix, str) or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix):
        return f"expected a DNS subdomain such as example.com (lower case), got {show(prefix)}"
    if "kubernetes.io/" in prefix + "/":
        return f"{prefix} is reserved for Kubernetes' own resources"
    if prefix.startswith("requests."):
        return f"{prefix} would make a resource name starting with 'requests.', which kubelet rejects"
    if len("requests." + prefix) > 253:
        return f"{prefix} is too long for kubelet's quota name (requests.<prefix> must fit in 253 characters)"
    return None


def _clashes(pool: PoolConfig, earlier: list[PoolConfig]) -> list[ConfigProblem]:
    """Names that would collide with an earlier valid pool: kubelet's resource, our socket, or the env vars."""
    for other in earlier:
        if other.resource_name == pool.resource_name:
            reason = f"{pool.resource_name} is already defined by an earlier pool"
        elif other.name == pool.name:
            reason = f"{pool.name} is already used by {other.resource_name} (the plugin socket is vnfio-<name>.sock)"
        elif env_suffix(other.resource_name) == env_suffix(pool.resource_name):
            reason = (
                f"{pool.resource_name} and {other.resource_name} would share the env var suffix "
                f"{env_suffix(pool.resource_name)}"
            )
        else:
            continue
        return [ConfigProblem(pool.name, "resourceName", reason)]
    return []

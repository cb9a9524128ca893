"""The pool configuration: a `resourceList` (JSON or YAML) turned into validated `PoolConfig`s.

A bad pool costs only itself: every problem names the pool, the key and the reason, and the valid pools
still run. Only a file that cannot be read or parsed at all, or has no `resourceList`, is fatal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deviceplugin.policy.selectors import VF_INDEX_MAX, FslMcSelectors, PciSelectors, PfNameEntry, parse_pf_name
from deviceplugin.records import DeviceType

DEFAULT_PREFIX = "vnfio.io"
IOMMU_GROUP_MODES = ("whole", "exclude")
POOL_KEYS = ("resourceName", "resourcePrefix", "deviceType", "selectors", "iommuGroups")
PCI_SELECTOR_KEYS = ("vendors", "devices", "drivers", "pciAddresses", "pfNames", "rootDevices")
FSLMC_SELECTOR_KEYS = ("containers", "drivers", "minObjects")
# The object types of the fsl-mc bus (kernel fsl_mc_get_device_type); a minObjects key outside it is a typo.
FSLMC_OBJECT_TYPES = (
    "dprc", "dpni", "dpmac", "dpio", "dpbp", "dpcon", "dpmcp", "dpseci",
    "dpdmai", "dpdmux", "dpsw", "dprtc", "dpci", "dpaiop", "dpdcei", "dpdbg",
)  # fmt: skip

# kubelet's extended resource name rules: a DNS-subdomain prefix and a qualified-name part.
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HEX4 = re.compile(r"^(0x)?[0-9a-fA-F]{4}$")
_PCI_ADDRESS = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
_DPRC = re.compile(r"^dprc\.[0-9]+$")

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


class ConfigError(Exception):
    """The configuration as a whole is unusable (unreadable, unparsable, or without a resourceList)."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with one pool; the pool is dropped, the others still run."""

    pool: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f'pool "{self.pool}": key "{self.key}": {self.reason}'


@dataclass(frozen=True)
class PoolConfig:
    """One valid pool of the configuration."""

    name: str
    prefix: str
    device_type: DeviceType
    selectors: PciSelectors | FslMcSelectors = field(default_factory=PciSelectors)
    iommu_groups: str = "whole"  # pci only: a multi-function group is one device ("whole") or left out

    @property
    def resource_name(self) -> str:
        return f"{self.prefix}/{self.name}"


@dataclass(frozen=True)
class ConfigResult:
    pools: tuple[PoolConfig, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()


def env_suffix(resource_name: str) -> str:
    """`intel.com/intel_vf` → `INTEL_COM_INTEL_VF`, as sriov-network-device-plugin and KubeVirt name env vars."""
    return re.sub(r"[./-]", "_", resource_name.upper())


def load_config(path: Path) -> ConfigResult:
    """Read and validate a config file; JSON or YAML, told apart by content."""
    try:
        text = Path(path).read_text()
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
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"neither JSON nor YAML: {exc}") from exc


def parse_config(data: object) -> ConfigResult:
    """Validate already-parsed config data."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping with a resourceList, got {_show(data)}")
    entries = data.get("resourceList")
    if not isinstance(entries, list):
        raise ConfigError(f'key "resourceList": expected a list of pools, got {_show(entries)}')
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


def _show(value: object) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


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
        bad("", f"expected a mapping with resourceName and deviceType, got {_show(entry)}")
        return None, problems
    for key in entry:
        if key not in POOL_KEYS:
            bad(str(key), f"unknown key (expected one of {', '.join(POOL_KEYS)})")

    name = entry.get("resourceName")
    if name is None:
        bad("resourceName", "required")
    elif not isinstance(name, str) or len(name) > 63 or not _NAME.match(name):
        bad(
            "resourceName",
            "expected up to 63 characters of letters, digits, '_', '-' and '.', "
            f"starting and ending with a letter or digit (kubelet's rule), got {_show(name)}",
        )
    prefix = entry.get("resourcePrefix", DEFAULT_PREFIX)
    if (reason := _prefix_problem(prefix)) is not None:
        bad("resourcePrefix", reason)

    raw_type = entry.get("deviceType")
    device_type: DeviceType | None = None
    if raw_type is None:
        bad("deviceType", "required (fslmc or pci)")
    elif raw_type not in (DeviceType.FSLMC.value, DeviceType.PCI.value):
        bad("deviceType", f"expected fslmc or pci, got {_show(raw_type)}")
    else:
        device_type = DeviceType(raw_type)

    mode = entry.get("iommuGroups", "whole")
    if "iommuGroups" in entry and device_type is DeviceType.FSLMC:
        bad("iommuGroups", "only for deviceType pci (a DPAA2 container is always one group)")
    elif mode not in IOMMU_GROUP_MODES:
        bad("iommuGroups", f"expected whole or exclude, got {_show(mode)}")

    selectors: PciSelectors | FslMcSelectors | None = None
    if device_type is not None:
        selectors = _parse_selectors(device_type, entry.get("selectors", {}), bad)
    if problems or selectors is None or device_type is None:
        return None, problems
    return PoolConfig(name, prefix, device_type, selectors, mode), problems


def _prefix_problem(prefix: object) -> str | None:
    if not isinstance(prefix, str) or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix):
        return f"expected a DNS subdomain such as example.com (lower case), got {_show(prefix)}"
    if "kubernetes.io/" in prefix + "/":
        return f"{prefix} is reserved for Kubernetes' own resources"
    if prefix.startswith("requests."):
        return f"{prefix} would make a resource name starting with 'requests.', which kubelet rejects"
    if len("requests." + prefix) > 253:
        return f"{prefix} is too long for kubelet's quota name (requests.<prefix> must fit in 253 characters)"
    return None


@dataclass(frozen=True)
class _ListKey:
    """A selector key whose value is a non-empty list of strings of one shape."""

    field: str  # PciSelectors / FslMcSelectors attribute
    expected: str  # how the problem message describes a good value
    pattern: re.Pattern[str]
    normalize: Callable[[str], str] = str

    def parse(self, value: object) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not value:
            return None
        if not all(isinstance(v, str) and self.pattern.match(v) for v in value):
            return None
        return tuple(dict.fromkeys(self.normalize(v) for v in value))


def _hex4(value: str) -> str:
    return value.lower().removeprefix("0x")


_ANY_NAME = re.compile(r"^\S+$")
_PCI_KEYS = {
    "vendors": _ListKey("vendors", "a list of 4-digit hex strings", _HEX4, _hex4),
    "devices": _ListKey("devices", "a list of 4-digit hex strings", _HEX4, _hex4),
    "drivers": _ListKey("drivers", "a list of driver names", _ANY_NAME),
    "pciAddresses": _ListKey("pci_addresses", "a list of PCI addresses like 0000:01:00.1", _PCI_ADDRESS, str.lower),
    "rootDevices": _ListKey("root_devices", "a list of PCI addresses like 0000:00:00.0", _PCI_ADDRESS, str.lower),
}
_FSLMC_KEYS = {
    "containers": _ListKey("containers", "a list of container names like dprc.2", _DPRC),
    "drivers": _ListKey("drivers", "a list of driver names", _ANY_NAME),
}


def _parse_selectors(
    device_type: DeviceType, raw: object, bad: Callable[[str, str], None]
) -> PciSelectors | FslMcSelectors | None:
    if not isinstance(raw, Mapping):
        bad("selectors", f"expected a mapping of selector keys, got {_show(raw)}")
        return None
    checks = _PCI_KEYS if device_type is DeviceType.PCI else _FSLMC_KEYS
    allowed = PCI_SELECTOR_KEYS if device_type is DeviceType.PCI else FSLMC_SELECTOR_KEYS
    values: dict[str, object] = {}
    ok = True
    for key, value in raw.items():
        where = f"selectors.{key}"
        if key not in allowed:
            bad(where, f"unknown selector for deviceType {device_type.value} (expected one of {', '.join(allowed)})")
            ok = False
        elif key == "pfNames":
            names, reason = _pf_names(value)
            if names is None:
                bad(where, reason or "")
                ok = False
            else:
                values["pf_names"] = names
        elif key == "minObjects":
            counts = _min_objects(value)
            if counts is None:
                bad(
                    where,
                    'expected a mapping of fsl-mc object type to a count >= 0, like {"dpni": 1} '
                    f"(types: {', '.join(FSLMC_OBJECT_TYPES)}), got {_show(value)}",
                )
                ok = False
            else:
                values["min_objects"] = counts
        else:
            spec = checks[key]
            parsed = spec.parse(value)
            if parsed is None:
                bad(where, f"expected {spec.expected}, got {_show(value)}")
                ok = False
            else:
                values[spec.field] = parsed
    if not ok:
        return None
    return PciSelectors(**values) if device_type is DeviceType.PCI else FslMcSelectors(**values)  # type: ignore[arg-type]


_PF_NAMES_EXPECTED = f"a list of interface names, each optionally with VF indexes 0-{VF_INDEX_MAX}: eth1, eth1#0-3,5"


def _pf_names(value: object) -> tuple[tuple[PfNameEntry, ...] | None, str | None]:
    """pfNames parsed, or the reason it is refused: the first bad entry, and what was wrong with it."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return None, f"expected {_PF_NAMES_EXPECTED}, got {_show(value)}"
    entries = []
    for entry in value:
        try:
            parsed = parse_pf_name(entry)
        except ValueError as exc:
            return None, f"{_show(entry)}: {exc}; expected {_PF_NAMES_EXPECTED}"
        if not _IFNAME.match(parsed.name):
            why = f"{_show(parsed.name)} is not an interface name" if parsed.name else "no interface name before '#'"
            return None, f"{_show(entry)}: {why}; expected {_PF_NAMES_EXPECTED}"
        entries.append(parsed)
    return tuple(dict.fromkeys(entries)), None


def _min_objects(value: object) -> dict[str, int] | None:
    if not isinstance(value, Mapping):
        return None
    counts: dict[str, int] = {}
    for kind, need in value.items():
        if kind not in FSLMC_OBJECT_TYPES or isinstance(need, bool) or not isinstance(need, int) or need < 0:
            return None
        counts[kind] = need
    return dict(sorted(counts.items()))


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

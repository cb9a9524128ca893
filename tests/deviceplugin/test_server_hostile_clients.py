"""Malformed and hostile requests against real `PluginServer`s over their unix sockets: empty, duplicated,
oversized, unknown, unhealthy and odd IDs, impossible GetPreferredAllocation sizes, random requests, and
raw bytes that are not HTTP/2 at all. Each gets a gRPC error status (or, where the API allows it, a correct
answer), never INTERNAL, and the server keeps serving: the next valid request succeeds and an open
ListAndWatch stream still carries updates.

The pools come from the generated board through discovery and policy, with one DPAA2 container made
unhealthy, so the answers are the ones kubelet would get on a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceplugin.discovery.inventory import discover
from deviceplugin.kubelet.dpapi.server import PluginServer
from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.policy.config import SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import ResourcePool
from deviceplugin.sampleboard import SampleBoard, build_sample_board

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

DPRC = "nxp.com/dpaa2_dprc"
VF = "intel.com/intel_vf"
OK_VF = "0001:01:00.1"
ODD_IDS = [
    "",
    " ",
    "dprc.2 ",
    "DPRC.2",
    "dprc.\uff12",  # a full-width digit two
    "dprc.2\x00",
    "dprc.1",
    "dprc.4",
    "../../dev/dprc.1",
    "/dev/vfio/vfio",
    "0001:01:00.1\n0001:01:00.2",
    "0001:01:00.1,0001:01:00.2",
    "iommu-group-22/../20",
    "💥" * 40,
    "x" * 100_000,
]
FIGURES = {"malformed": 0, "random": 0, "garbage": 0}


class Served:
    """One PluginServer per pool on an event loop of its own (as in the daemon), reached over unix sockets."""

    def __init__(self, pools: dict[str, ResourcePool], plugin_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="plugin-servers", daemon=True)
        self.thread.start()
        self.servers = {name: PluginServer(pool, plugin_dir) for name, pool in pools.items()}
        for server in self.servers.values():
            self.run(server.start())
        self.channels = {n: grpc.insecure_channel(f"unix://{s.socket_path}") for n, s in self.servers.items()}
        self.stubs = {n: api_pb2_grpc.DevicePluginStub(c) for n, c in self.channels.items()}

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def update(self, name: str, pool: ResourcePool) -> None:
        async def swap() -> None:
            self.servers[name].update(pool)

        self.run(swap())

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        for server in self.servers.values():
            self.run(server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> SampleBoard:
    return build_sample_board(tmp_path_factory.mktemp("grpc") / "board")


@pytest.fixture(scope="module")
def pools(board: SampleBoard) -> dict[str, ResourcePool]:
    """The sample pools, with dprc.3 known to kubelet and then unhealthy (one of its objects unbound)."""
    configs = parse_config(SAMPLE_CONFIG).pools
    known = build_pools(configs, discover(board.sys, board.dev)).pools
    board.unbind("dpio.18")
    try:
        return build_pools(configs, discover(board.sys, board.dev), previous=known).pools
    finally:
        board.bind("dpio.18", "vfio-fsl-mc")


@pytest.fixture(scope="module")
def served(pools: dict[str, ResourcePool]) -> Iterator[Served]:
    plugin_dir = Path(tempfile.mkdtemp(prefix=f"vnfio-grpc-{os.getpid()}-", dir="/tmp"))
    served = Served(pools, plugin_dir)
    try:
        yield served
    finally:
        served.close()
        shutil.rmtree(plugin_dir, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    print(
        f"\nFIGURE grpc: {FIGURES['malformed']} malformed requests, {FIGURES['random']} random requests, "
        f"{FIGURES['garbage']} raw non-HTTP/2 connections; the server answered a valid request after each"
    )


def allocate_request(*containers: list[str]) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
    )


def preferred_request(available: list[str], must: list[str], size: int) -> api_pb2.PreferredAllocationRequest:
    return api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
            )
        ]
    )


def assert_still_serving(served: Served) -> None:
    """A valid Allocate on each pool is answered as it was before anything hostile happened."""
    dprc = served.stubs[DPRC].Allocate(allocate_request(["dprc.2"]), timeout=10).container_responses[0]
    assert dprc.envs["DPRC"] == "dprc.2"
    vf = served.stubs[VF].Allocate(allocate_request([OK_VF]), timeout=10).container_responses[0]
    assert vf.envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == OK_VF


def refused(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=20)
    return info.value


def expected_nodes(pool: ResourcePool, ids: list[str]) -> set[tuple[str, str]]:
    groups = {g for i in ids for g in pool.device(i).iommu_groups}  # type: ignore[union-attr]
    dev = Path(pool.devices[0].nodes[0].host_path).parent.parent
    return {(str(dev / "vfio/vfio"), "/dev/vfio/vfio")} | {(str(dev / f"vfio/{g}"), f"/dev/vfio/{g}") for g in groups}


# ------------------------------------------------------------------------------------------ Allocate
ALLOCATE_REFUSALS = [
    ("an empty device list", [[]], grpc.StatusCode.INVALID_ARGUMENT),
    ("a duplicated ID", [[OK_VF, OK_VF]], grpc.StatusCode.INVALID_ARGUMENT),
    ("10,000 copies of one ID", [[OK_VF] * 10_000], grpc.StatusCode.INVALID_ARGUMENT),
    ("10,000 unknown IDs", [[f"0001:{i // 256:02x}:{i % 256 // 8:02x}.{i % 8}x" for i in range(10_000)]], None),
    ("an unknown ID", [["0001:01:00.9"]], grpc.StatusCode.NOT_FOUND),
    ("a known ID next to an unknown one", [[OK_VF, "0001:01:00.9"]], grpc.StatusCode.NOT_FOUND),
    ("another pool's ID", [["dprc.2"]], grpc.StatusCode.NOT_FOUND),
    ("a bad container among good ones", [[OK_VF], ["0001:01:00.2"], ["nope"]], grpc.StatusCode.NOT_FOUND),
]


@pytest.mark.parametrize(("what", "containers", "code"), ALLOCATE_REFUSALS, ids=[c[0] for c in ALLOCATE_REFUSALS])
def test_malformed_allocate_requests_are_refused_and_the_server_stays_up(
    served: Served, what: str, containers: list[list[str]], code: grpc.StatusCode | None
) -> None:
    error = refused(served.stubs[VF].Allocate, allocate_request(*containers))
    assert error.code() == (code or grpc.StatusCode.NOT_FOUND), error.details()
    # The message names the problem without repeating an unbounded list back to kubelet.
    assert len(error.details() or "") < 2_000
    FIGURES["malformed"] += 1
    assert_still_serving(served)


@pytest.mark.parametrize("device_id", ODD_IDS, ids=[repr(i)[:24] for i in ODD_IDS])
def test_odd_ids_are_unknown(served: Served, device_id: str) -> None:
    for resource in (DPRC, VF):
        error = refused(served.stubs[resource].Allocate, allocate_request([device_id]))
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert len(error.details() or "") < 2_000
        FIGURES["malformed"] += 1
    assert_still_serving(served)


def test_unhealthy_and_doubled_dpaa2_requests_are_refused(served: Served) -> None:
    assert refused(served.stubs[DPRC].Allocate, allocate_request(["dprc.3"])).code() == grpc.StatusCode.INVALID_ARGUMENT
    two = refused(served.stubs[DPRC].Allocate, allocate_request(["dprc.2", "dprc.3"]))
    assert two.code() == grpc.StatusCode.INVALID_ARGUMENT
    FIGURES["malformed"] += 2
    assert_still_serving(served)


def test_no_container_requests_get_no_container_responses(served: Served) -> None:
    """An AllocateRequest with no container requests is answered with none (kubelet never sends one)."""
    reply = served.stubs[VF].Allocate(api_pb2.AllocateRequest(), timeout=10)
    assert list(reply.container_responses) == []
    FIGURES["malformed"] += 1
    assert_still_serving(served)


def test_a_thousand_container_requests_are_each_answered_exactly(
    served: Served, pools: dict[str, ResourcePool]
) -> None:
    ids = [["0001:01:00.2", OK_VF], ["iommu-group-22"], [OK_VF]] * 333 + [["0001:01:00.2"]]
    reply = served.stubs[VF].Allocate(allocate_request(*ids), timeout=30)
    assert len(reply.container_responses) == len(ids) == 1000
    for asked, answer in zip(ids, reply.container_responses, strict=True):
        assert {(d.host_path, d.container_path) for d in answer.devices} == expected_nodes(pools[VF], asked)
    FIGURES["malformed"] += 1


def test_invalid_utf8_in_an_id_is_refused_by_grpc_and_the_server_stays_up(served: Served) -> None:
    """A string field that is not UTF-8 cannot come from a protobuf client; sent as raw bytes it fails to
    parse and gRPC answers for us."""
    # AllocateRequest{container_requests: [{devices_ids: [b"\xff\xfe"]}]}, encoded by hand.
    inner = b"\x0a\x02\xff\xfe"
    raw = b"\x0a" + bytes([len(inner)]) + inner
    call = served.channels[VF].unary_unary(
        "/v1beta1.DevicePlugin/Allocate",
        request_serializer=lambda body: body,
        response_deserializer=api_pb2.AllocateResponse.FromString,
    )
    error = refused(call, raw)
    # gRPC's own answer for a request it cannot parse (UNKNOWN in grpcio's asyncio server).
    assert error.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    assert "parsing" in (error.details() or "")
    FIGURES["malformed"] += 1
    assert_still_serving(served)


def test_a_message_over_grpcs_size_limit_is_refused(served: Served) -> None:
    error = refused(served.stubs[VF].Allocate, allocate_request(["y" * (5 << 20)]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    FIGURES["malformed"] += 1
    assert_still_serving(served)


# ------------------------------------------------------------------------------- GetPreferredAllocation
VFS = [OK_VF, "0001:01:00.2", "iommu-group-22"]
PREFERRED_REFUSALS = [
    ("a negative size", VFS, [], -1),
    ("the largest int32 size", VFS, [], 2**31 - 1),
    ("more than available", VFS, [], 4),
    ("must-include not available", [OK_VF], ["0001:01:00.2"], 1),
    ("more must-include than size", VFS, VFS, 2),
    ("an unknown available ID", [*VFS, "0001:01:00.9"], [], 1),
    ("10,000 unknown available IDs", [f"vf-{i}" for i in range(10_000)], [], 1),
    ("odd available IDs", ODD_IDS, [], 1),
]


@pytest.mark.parametrize(
    ("what", "available", "must", "size"), PREFERRED_REFUSALS, ids=[c[0] for c in PREFERRED_REFUSALS]
)
def test_impossible_preferred_allocations_are_refused(
    served: Served, what: str, available: list[str], must: list[str], size: int
) -> None:
    error = refused(served.stubs[VF].GetPreferredAllocation, preferred_request(available, must, size))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert len(error.details() or "") < 2_000
    FIGURES["malformed"] += 1
    assert_still_serving(served)


@pytest.mark.parametrize(
    ("available", "must", "size", "answer"),
    [
        (VFS, [], 0, []),
        ([], [], 0, []),
        ([OK_VF, OK_VF, "0001:01:00.2"], [OK_VF, OK_VF], 2, [OK_VF, "0001:01:00.2"]),
        (VFS, ["iommu-group-22"], 1, ["iommu-group-22"]),
    ],
)
def test_degenerate_preferred_allocations_get_exact_answers(
    served: Served, available: list[str], must: list[str], size: int, answer: list[str]
) -> None:
    reply = served.stubs[VF].GetPreferredAllocation(preferred_request(available, must, size), timeout=10)
    assert list(reply.container_responses[0].deviceIDs) == answer
    FIGURES["malformed"] += 1


def test_empty_preferred_request_gets_no_responses(served: Served) -> None:
    reply = served.stubs[VF].GetPreferredAllocation(api_pb2.PreferredAllocationRequest(), timeout=10)
    assert list(reply.container_responses) == []
    FIGURES["malformed"] += 1


# ---------------------------------------------------------------------------------------- random requests
ANY_ID = st.one_of(
    st.sampled_from([*VFS, "dprc.2", "dprc.3", "dprc.1", "0001:01:00.9"]),
    st.sampled_from(ODD_IDS[:-1]),
    st.text(max_size=70),
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    resource=st.sampled_from([DPRC, VF]),
    containers=st.lists(st.lists(ANY_ID, max_size=6), max_size=3),
    available=st.lists(ANY_ID, max_size=6),
    must=st.lists(ANY_ID, max_size=3),
    size=st.integers(min_value=-3, max_value=8),
)
def test_random_requests_get_a_correct_answer_or_a_clean_refusal(
    served: Served,
    pools: dict[str, ResourcePool],
    resource: str,
    containers: list[list[str]],
    available: list[str],
    must: list[str],
    size: int,
) -> None:
    pool = pools[resource]
    stub = served.stubs[resource]
    clean = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    try:
        reply = stub.Allocate(allocate_request(*containers), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in clean, exc.details()
    else:
        assert len(reply.container_responses) == len(containers)
        for asked, answer in zip(containers, reply.container_responses, strict=True):
            devices = [pool.device(i) for i in asked]
            assert asked and len(set(asked)) == len(asked) and all(d is not None and d.healthy for d in devices)
            assert {(d.host_path, d.container_path) for d in answer.devices} == expected_nodes(pool, asked)
    try:
        preferred = stub.GetPreferredAllocation(preferred_request(available, must, size), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in clean, exc.details()
    else:
        chosen = list(preferred.container_responses[0].deviceIDs)
        assert len(chosen) == size and len(set(chosen)) == size
        assert set(must) <= set(chosen) <= set(available)
    FIGURES["random"] += 1
    assert_still_serving(served)


# ------------------------------------------------------------------------------------------- raw bytes
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GARBAGE = {
    "random bytes": bytes(random.Random(8).randrange(256) for _ in range(4096)),
    "HTTP/1.1": b"GET /v1beta1.DevicePlugin/Allocate HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "TLS hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 160,
    "preface then junk frames": PREFACE + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\xff" * 4000,
    "half a preface": PREFACE[:10],
    "a huge frame header": PREFACE + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",
    "nothing": b"",
}


def _ugly_connection(path: Path, payload: bytes, *, reset: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        if payload:
            with contextlib.suppress(OSError):  # the server may hang up on us halfway: that is its right
                s.sendall(payload)
        if reset:
            # Close with pending data discarded, the rudest way a peer can leave.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        else:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)  # whatever the server says before it closes


def test_bytes_that_are_not_http2_do_not_hurt_the_server(served: Served, pools: dict[str, ResourcePool]) -> None:
    # A kubelet-like stream stays open through all of it and still receives the next update.
    stream = served.stubs[VF].ListAndWatch(api_pb2.Empty())
    first = next(stream)
    assert {d.ID for d in first.devices} == set(VFS)
    path = served.servers[VF].socket_path
    idle = []
    try:
        for _ in range(32):  # connections that never say anything, held open throughout
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            idle.append(s)
        for name, payload in GARBAGE.items():
            for reset in (False, True):
                _ugly_connection(path, payload, reset=reset)
                FIGURES["garbage"] += 1
                assert_still_serving(served)
            assert name
        unhealthy = replace(pools[VF], devices=tuple(replace(d, healthy=False) for d in pools[VF].devices))
        served.update(VF, unhealthy)
        assert {d.health for d in next(stream).devices} == {"Unhealthy"}
    finally:
        served.update(VF, pools[VF])
        stream.cancel()
        for s in idle:
            s.close()
    assert_still_serving(served)

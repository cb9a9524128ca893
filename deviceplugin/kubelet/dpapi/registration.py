"""Registering one pool's server with kubelet over `<plugin-dir>/kubelet.sock` (the Registration service).

Kubelet handles Register synchronously: before it answers, it dials our socket back (up to 10 s) and asks
for our options. So the server must already be serving, and our call must wait longer than kubelet's dial.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import grpc

from deviceplugin.kubelet.dpapi.kubeletwatch import kubelet_socket
from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.records import ResourcePool

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
# Above kubelet's own 10 s dial-back, so a slow dial-back is not mistaken for a refusal.
REGISTER_TIMEOUT = 15.0


class RegistrationError(Exception):
    """Kubelet is not there, or it refused or did not answer the registration."""


def register_request(pool: ResourcePool, options: api_pb2.DevicePluginOptions) -> api_pb2.RegisterRequest:
    """The request for one pool: the endpoint is our socket's bare file name, kubelet joins it to its dir."""
    return api_pb2.RegisterRequest(
        version=API_VERSION, endpoint=pool.socket_name, resource_name=pool.resource_name, options=options
    )


async def register(
    plugin_dir: Path,
    pool: ResourcePool,
    options: api_pb2.DevicePluginOptions,
    *,
    timeout: float = REGISTER_TIMEOUT,
) -> None:
    """Register `pool` with the kubelet serving `<plugin_dir>/kubelet.sock`; RegistrationError when that fails.

    `options` must be what the pool's server returns from GetDevicePluginOptions.
    """
    socket = kubelet_socket(plugin_dir)
    try:
        is_socket = stat.S_ISSOCK(socket.stat().st_mode)
    except FileNotFoundError:
        raise RegistrationError(f"kubelet is not listening: {socket} does not exist") from None
    if not is_socket:
        raise RegistrationError(f"kubelet is not listening: {socket} is not a socket")
    request = register_request(pool, options)
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        try:
            await api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise RegistrationError(
                f"registering {pool.resource_name} with kubelet at {socket} failed: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
    log.info(
        "registered %s with kubelet (endpoint %s)",
        pool.resource_name,
        request.endpoint,
        extra={"resource": pool.resource_name},
    )

"""The few API server calls the DRA driver makes (read a ResourceClaim; list, create, replace and delete this
node's ResourceSlices), as plain JSON over HTTP.

The `kubernetes` package only finds the cluster (in-cluster service account, or a kubeconfig) and its
credentials; requests go through `http.client` with that configuration, so what is sent is exactly the
documented REST form and the driver does not depend on the generated models of one client version. Blocking:
call from a worker thread.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

RESOURCE_API = "/apis/resource.k8s.io/v1"
REQUEST_TIMEOUT = 10.0  # a hung API server must not hold a Prepare or the publisher forever


class ApiError(Exception):
    """An API call failed: the HTTP status (0 when the server was not reached) and the server's message."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"{what}: {f'HTTP {status}: ' if status else ''}{message}")
        self.status = status


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate to it."""

    host: str  # https://10.0.0.1:443 or http://127.0.0.1:8080
    headers: tuple[tuple[str, str], ...] = ()
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def connect(kubeconfig: Path | None) -> Connection:
    """The API server of `kubeconfig`, or of the in-cluster service account when None."""
    from kubernetes import client, config  # heavy; only the driver pays for it

    configuration = client.Configuration()
    if kubeconfig is None:
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    headers = []
    for setting in configuration.auth_settings().values():
        if setting.get("in") == "header" and setting.get("value"):
            headers.append((setting["key"], setting["value"]))
    return Connection(
        host=configuration.host,
        headers=tuple(headers),
        ca_file=configuration.ssl_ca_cert,
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        verify=bool(configuration.verify_ssl),
    )


class KubeApi:
    """Blocking JSON calls against one API server."""

    def __init__(self, connection: Connection, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.connection = connection
        self._timeout = timeout
        url = urlsplit(connection.host)
        self._https = url.scheme == "https"
        self._netloc = url.netloc
        self._base = url.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            context = ssl.create_default_context(cafile=connection.ca_file)
            if not connection.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if connection.cert_file:
                context.load_cert_chain(connection.cert_file, connection.key_file)
            self._ssl = context

    def request(self, what: str, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        """One call; the decoded JSON answer, or ApiError naming `what` was being done."""
        target = self._base + path + (f"?{urlencode(query)}" if query else "")
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._netloc, timeout=self._timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._netloc, timeout=self._timeout)
        headers = {"Accept": "application/json", **dict(self.connection.headers)}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(what, 0, f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        if response.status >= 300:
            message = answer.get("message") if isinstance(answer, dict) else raw[:200].decode("utf-8", "replace")
            raise ApiError(what, response.status, str(message or response.reason))
        return answer

    # ---------------------------------------------------------------------------------------- claims
    def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
        path = f"{RESOURCE_API}/namespaces/{quote(namespace, safe='')}/resourceclaims/{quote(name, safe='')}"
        return self.request(f"reading ResourceClaim {namespace}/{name}", "GET", path)

    # ---------------------------------------------------------------------------------------- slices
    def list_slices(self, node: str, driver: str) -> list[dict[str, Any]]:
        """This node's slices of this driver (the API server indexes both fields)."""
        query = {"fieldSelector": f"spec.nodeName={node},spec.driver={driver}"}
        answer = self.request(f"listing ResourceSlices of node {node}", "GET", f"{RESOURCE_API}/resourceslices",
                              query=query)
        return list((answer or {}).get("items") or [])

    def create_slice(self, document: dict[str, Any]) -> dict[str, Any]:
        name = document["metadata"]["name"]
        return self.request(f"creating ResourceSlice {name}", "POST", f"{RESOURCE_API}/resourceslices", document)

    def replace_slice(self, document: dict[str, Any]) -> dict[str, Any]:
        name = document["metadata"]["name"]
        path = f"{RESOURCE_API}/resourceslices/{quote(name, safe='')}"
        return self.request(f"updating ResourceSlice {name}", "PUT", path, document)

    def delete_slice(self, name: str) -> None:
        try:
            path = f"{RESOURCE_API}/resourceslices/{quote(name, safe='')}"
            self.request(f"deleting ResourceSlice {name}", "DELETE", path)
        except ApiError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

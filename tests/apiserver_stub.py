"""A local stand-in for the Kubernetes API server: the Node and Event endpoints the device plugin uses, and the
ResourceClaims and ResourceSlices (`resource.k8s.io/v1`) the DRA driver uses.

It listens on http://127.0.0.1:<ephemeral>, records every request (method, path, query, content type,
authorization, JSON body) and answers like the API server: a merge patch of a Node returns the patched Node,
creating an Event returns it with 201 (409 AlreadyExists for a name it has), anything else a 404 Status. It
can fail the first N calls with a 500 Status, to show that callers retry.

ResourceClaims are served from `claims` (tests put them there); ResourceSlices are created, replaced (with
resourceVersion checks: 409 Conflict on a stale one), listed (with the `spec.nodeName` and `spec.driver` field
selectors the real server indexes) and deleted, and each write is validated by the rules of the real server's
validation (`slice_problems`): a write it would refuse answers 422 Invalid.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_NODE_PATH = "/api/v1/nodes/"
_EVENTS = "/events"
_RESOURCE = "/apis/resource.k8s.io/v1/"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SLICE_SPEC_KEYS = {"driver", "pool", "nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection", "devices",
                    "sharedCounters"}
_DEVICE_KEYS = {"name", "attributes", "capacity", "consumesCounters", "nodeName", "nodeSelector", "allNodes",
                "taints", "bindsToNode", "bindingConditions", "bindingFailureConditions", "allowMultipleAllocations"}
_VALUE_KEYS = {"int", "bool", "string", "version"}


def slice_problems(body: Any) -> list[str]:
    """Why the API server would refuse this ResourceSlice (resource.k8s.io/v1 validation, the parts a node-local
    driver touches); [] when it would store it."""
    if not isinstance(body, dict):
        return ["body: not an object"]
    problems = []
    if body.get("apiVersion") != "resource.k8s.io/v1" or body.get("kind") != "ResourceSlice":
        problems.append(f"apiVersion/kind: {body.get('apiVersion')}/{body.get('kind')}")
    name = (body.get("metadata") or {}).get("name") or ""
    if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name: {name!r} is not a DNS subdomain")
    spec = body.get("spec") or {}
    problems += [f"spec.{k}: unknown field" for k in spec if k not in _SLICE_SPEC_KEYS]
    driver = spec.get("driver") or ""
    if not driver or len(driver) > 63 or not _DNS_SUBDOMAIN.match(driver):
        problems.append(f"spec.driver: {driver!r} is not a DNS subdomain of at most 63 characters")
    pool = spec.get("pool") or {}
    if not pool.get("name"):
        problems.append("spec.pool.name: Required value")
    if not isinstance(pool.get("generation"), int) or pool.get("generation") < 0:
        problems.append("spec.pool.generation: must be an int >= 0")
    if not isinstance(pool.get("resourceSliceCount"), int) or pool.get("resourceSliceCount") < 1:
        problems.append("spec.pool.resourceSliceCount: must be >= 1")
    selectors = [k for k in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection") if spec.get(k)]
    if len(selectors) != 1:
        problems.append(f"spec: exactly one of nodeName, nodeSelector, allNodes, perDeviceNodeSelection ({selectors})")
    devices = spec.get("devices") or []
    if len(devices) > 128:
        problems.append(f"spec.devices: {len(devices)} devices, at most 128")
    names = set()
    for i, device in enumerate(devices):
        where = f"spec.devices[{i}]"
        problems += [f"{where}.{k}: unknown field" for k in device if k not in _DEVICE_KEYS]
        dname = device.get("name") or ""
        if not _DNS_LABEL.match(dname):
            problems.append(f"{where}.name: {dname!r} is not a DNS label")
        if dname in names:
            problems.append(f"{where}.name: duplicate {dname!r}")
        names.add(dname)
        attributes = device.get("attributes") or {}
        if len(attributes) + len(device.get("capacity") or {}) > 32:
            problems.append(f"{where}: more than 32 attributes and capacities")
        for key, value in attributes.items():
            domain, _, ident = key.rpartition("/")
            if (domain and not _DNS_SUBDOMAIN.match(domain)) or not _C_IDENTIFIER.match(ident) or len(ident) > 32:
                problems.append(f"{where}.attributes[{key}]: not a (domain-prefixed) C identifier")
            if not isinstance(value, dict) or len(value) != 1 or not set(value) <= _VALUE_KEYS:
                problems.append(f"{where}.attributes[{key}]: exactly one of int, bool, string, version")
            elif "int" in value and (isinstance(value["int"], bool) or not isinstance(value["int"], int)):
                problems.append(f"{where}.attributes[{key}].int: not an integer")
            elif "string" in value and (not isinstance(value["string"], str) or len(value["string"]) > 64):
                problems.append(f"{where}.attributes[{key}].string: not a string of at most 64 characters")
        for j, taint in enumerate(device.get("taints") or []):
            if taint.get("effect") not in ("NoSchedule", "NoExecute"):
                problems.append(f"{where}.taints[{j}].effect: {taint.get('effect')!r}")
    return problems


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    content_type: str | None
    authorization: str | None
    body: Any = field(default=None, compare=False, hash=False)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class ApiServerStub:
    """Start with `start()`, point a client at `url`, inspect `requests`, `nodes` and `events`; `stop()` ends it."""

    def __init__(self, nodes: tuple[str, ...] = ("node-a",), *, token: str | None = None, fail_first: int = 0) -> None:
        self.token = token
        self.fail_first = fail_first
        self.requests: list[Request] = []
        self.nodes: dict[str, dict[str, Any]] = {
            name: {"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "uid": f"uid-{name}", "labels": {"kubernetes.io/hostname": name}}}
            for name in nodes
        }
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) → ResourceClaim
        self.slices: dict[str, dict[str, Any]] = {}  # name → ResourceSlice
        self.deleted_slices: list[str] = []
        self.down = False  # answer every call with 503, as an API server that is not there yet
        self._version = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.changed = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ApiServerStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._handle(self)

            def do_PATCH(self) -> None:
                stub._handle(self)

            def do_POST(self) -> None:
                stub._handle(self)

            def do_PUT(self) -> None:
                stub._handle(self)

            def do_DELETE(self) -> None:
                stub._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Block until `predicate(stub)` holds (evaluated under the lock after every request)."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    def node_labels(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self.nodes[name]["metadata"].get("labels", {}))

    # --------------------------------------------------------------------------------------- handling
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = Request(
            handler.command, url.path, url.query, handler.headers.get("Content-Type"),
            handler.headers.get("Authorization"), body,
        )
        with self.changed:
            self.requests.append(request)
            code, answer = self._answer(request)
            self.changed.notify_all()
        data = json.dumps(answer).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        if self.token is not None and request.authorization != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if self.down:
            return 503, _status(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        if self.fail_first > 0:
            self.fail_first -= 1
            return 500, _status(500, "InternalError", "etcdserver: request timed out")
        if request.path.startswith(_RESOURCE):
            return self._resource(request)
        if request.path.startswith(_NODE_PATH):
            return self._node(request)
        parts = request.path.strip("/").split("/")
        if request.method == "POST" and len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and \
                parts[4] == "events":
            return self._create_event(parts[3], request)
        return 404, _status(404, "NotFound", f"the server could not find the requested resource {request.path}")

    def _node(self, request: Request) -> tuple[int, dict[str, Any]]:
        name = request.path[len(_NODE_PATH):]
        if name not in self.nodes:
            return 404, _status(404, "NotFound", f'nodes "{name}" not found')
        if request.method == "PATCH":
            if request.content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                return 415, _status(415, "UnsupportedMediaType", f"unsupported patch type {request.content_type}")
            self.nodes[name] = merge_patch(self.nodes[name], request.body)
        elif request.method != "GET":
            return 405, _status(405, "MethodNotAllowed", request.method)
        return 200, self.nodes[name]

    def _create_event(self, namespace: str, request: Request) -> tuple[int, dict[str, Any]]:
        if request.content_type != "application/json":
            return 415, _status(415, "UnsupportedMediaType", f"unsupported media type {request.content_type}")
        body = request.body
        if not isinstance(body, dict) or not body.get("involvedObject"):
            return 422, _status(422, "Invalid", "involvedObject: Required value")
        name = body.get("metadata", {}).get("name")
        if not name:
            return 422, _status(422, "Invalid", "metadata.name: Required value")
        if body["metadata"].get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the namespace of the object does not match the request")
        if (namespace, name) in self.events:
            return 409, _status(409, "AlreadyExists", f'events "{name}" already exists')
        stored = merge_patch(body, {"metadata": {"namespace": namespace, "uid": f"uid-{len(self.events)}"}})
        self.events[(namespace, name)] = stored
        return 201, stored

    # ------------------------------------------------------------------------------- resource.k8s.io/v1
    def put_claim(self, claim: dict[str, Any]) -> None:
        """Store a ResourceClaim as the scheduler left it (with status.allocation)."""
        with self.changed:
            meta = claim["metadata"]
            self.claims[(meta["namespace"], meta["name"])] = copy.deepcopy(claim)
            self.changed.notify_all()

    def slice_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(s) for _, s in sorted(self.slices.items())]

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _resource(self, request: Request) -> tuple[int, dict[str, Any]]:
        parts = request.path[len(_RESOURCE):].strip("/").split("/")
        if len(parts) == 4 and parts[0] == "namespaces" and parts[2] == "resourceclaims":
            if request.method != "GET":
                return 405, _status(405, "MethodNotAllowed", request.method)
            claim = self.claims.get((parts[1], parts[3]))
            if claim is None:
                return 404, _status(404, "NotFound", f'resourceclaims.resource.k8s.io "{parts[3]}" not found')
            return 200, claim
        if parts[0] != "resourceslices" or len(parts) > 2:
            return 404, _status(404, "NotFound", f"the server could not find the requested resource {request.path}")
        if len(parts) == 1:
            if request.method == "GET":
                return 200, self._list_slices(request.query)
            if request.method == "POST":
                return self._write_slice(None, request)
            return 405, _status(405, "MethodNotAllowed", request.method)
        name = parts[1]
        if request.method == "GET":
            found = self.slices.get(name)
            return (200, found) if found else (404, _status(404, "NotFound", f'resourceslices "{name}" not found'))
        if request.method == "PUT":
            return self._write_slice(name, request)
        if request.method == "DELETE":
            if self.slices.pop(name, None) is None:
                return 404, _status(404, "NotFound", f'resourceslices.resource.k8s.io "{name}" not found')
            self.deleted_slices.append(name)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        return 405, _status(405, "MethodNotAllowed", request.method)

    def _list_slices(self, query: str) -> dict[str, Any]:
        selectors = parse_qs(query).get("fieldSelector", [""])[0]
        wanted = dict(term.split("=", 1) for term in selectors.split(",") if "=" in term)
        fields = {"spec.nodeName": lambda s: s["spec"].get("nodeName"), "spec.driver": lambda s: s["spec"]["driver"]}
        items = [s for _, s in sorted(self.slices.items())
                 if all(fields[k](s) == v for k, v in wanted.items() if k in fields)]
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
                "metadata": {"resourceVersion": str(self._version)}, "items": items}

    def _write_slice(self, name: str | None, request: Request) -> tuple[int, dict[str, Any]]:
        if request.content_type != "application/json":
            return 415, _status(415, "UnsupportedMediaType", f"unsupported media type {request.content_type}")
        body = request.body
        problems = slice_problems(body)
        if problems:
            return 422, _status(422, "Invalid", "ResourceSlice is invalid: " + "; ".join(problems))
        meta = body["metadata"]
        if name is None:
            if meta["name"] in self.slices:
                return 409, _status(409, "AlreadyExists", f'resourceslices "{meta["name"]}" already exists')
            code = 201
        else:
            if meta["name"] != name:
                return 400, _status(400, "BadRequest", "the name of the object does not match the name on the URL")
            current = self.slices.get(name)
            if current is None:
                return 404, _status(404, "NotFound", f'resourceslices.resource.k8s.io "{name}" not found')
            if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified; please apply your changes to the "
                                                     "latest version and try again")
            code = 200
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = self._next_version()
        stored["metadata"].setdefault("uid", f"uid-slice-{meta['name']}")
        self.slices[meta["name"]] = stored
        return code, stored

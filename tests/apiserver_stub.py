"""A local stand-in for the Kubernetes API server: just the Node and Event endpoints the device plugin uses.

It listens on http://127.0.0.1:<ephemeral>, records every request (method, path, query, content type,
authorization, JSON body) and answers like the API server: a merge patch of a Node returns the patched Node,
creating an Event returns it with 201 (409 AlreadyExists for a name it has), anything else a 404 Status. It
can fail the first N calls with a 500 Status, to show that callers retry.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_NODE_PATH = "/api/v1/nodes/"
_EVENTS = "/events"


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
        if self.fail_first > 0:
            self.fail_first -= 1
            return 500, _status(500, "InternalError", "etcdserver: request timed out")
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

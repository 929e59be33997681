"""The object store behind [`FakeAPIServer`][sa_token.testing.apiserver.FakeAPIServer]: API
discovery, lists and ``?watch=true`` streams of a few resources, enough for the Kubernetes
clients' watches and for a kopf operator in standalone mode.

Served (after the server authenticated the request):

* discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/apiextensions.k8s.io/v1``;
* ``GET`` lists of ``configmaps``, ``events`` (and ``pods`` cluster-wide: the namespaced pod
  list keeps its two fixed pods) and ``customresourcedefinitions`` (always empty), with a
  ``resourceVersion`` in their metadata;
* ``?watch=true`` on any of those lists (and on namespaced pods): a chunked stream of JSON
  events (``{"type": "ADDED", "object": {...}}``) newer than the ``resourceVersion`` asked for,
  which ends after ``timeoutSeconds`` like the real API server's, or when the test calls
  [`close_watches`][sa_token.testing._objects.ObjectStore.close_watches];
* ``POST`` of an ``Event`` (kopf posts them; stored, never watched by the tests).

Tests change objects with [`put`][sa_token.testing._objects.ObjectStore.put] and
[`delete`][sa_token.testing._objects.ObjectStore.delete]; each change is one watch event.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import parse_qs

__all__ = ["ObjectStore"]

# name -> (kind, namespaced, verbs); every resource here lives in the core group "v1".
CORE_RESOURCES = {
    "pods": ("Pod", True),
    "configmaps": ("ConfigMap", True),
    "events": ("Event", True),
    "namespaces": ("Namespace", False),
}
CRD_RESOURCE = "customresourcedefinitions"
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
# A watch without timeoutSeconds ends after this long (the real server picks 30-60 min at random;
# tests end theirs with close_watches() or by closing the server long before).
DEFAULT_WATCH_SECONDS = 1800.0


def _resource_list(group_version: str, resources: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
             "verbs": VERBS}
            for name, (kind, namespaced) in resources.items()
        ],
    }


DISCOVERY: dict[str, dict[str, Any]] = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]},
    "/api/v1": _resource_list("v1", CORE_RESOURCES),
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
        "name": "apiextensions.k8s.io",
        "versions": [{"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"},
    }]},
    "/apis/apiextensions.k8s.io/v1": _resource_list(
        "apiextensions.k8s.io/v1", {CRD_RESOURCE: ("CustomResourceDefinition", False)}
    ),
}


class ObjectStore:
    """Objects by (resource, namespace, name), a change log for watches, and the watchers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 1
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._log: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)
        self._generation = 0  # bumped by close_watches()
        self._closed = False
        self.watches_served = 0

    # ------------------------------------------------------------------ for tests ---------
    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (an ``ADDED`` or ``MODIFIED`` event); returns it with
        its new ``resourceVersion``."""
        meta = obj.setdefault("metadata", {})
        key = (resource, meta.get("namespace", ""), meta["name"])
        with self._cond:
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            obj["metadata"].setdefault("uid", f"00000000-0000-0000-0000-{self._rv:012d}")
            obj.setdefault("apiVersion", "v1")
            obj.setdefault("kind", CORE_RESOURCES.get(resource, (resource, True))[0])
            kind = "MODIFIED" if key in self._objects else "ADDED"
            self._objects[key] = obj
            self._log.append((self._rv, resource, kind, obj))
            self._cond.notify_all()
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        """Remove an object (a ``DELETED`` event)."""
        with self._cond:
            obj = self._objects.pop((resource, namespace, name))
            self._rv += 1
            self._log.append((self._rv, resource, "DELETED", obj))
            self._cond.notify_all()

    def close_watches(self) -> None:
        """End every open watch stream from the server side (as an API server restart or its
        watch timeout does); the clients reconnect."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ serving -----------
    def serve(self, handler: Any, method: str, path: str, query: str, record: Callable[[int], None]) -> bool:
        """Answer the request if it is ours; False leaves it to the server's other routes."""
        if method == "GET" and path.rstrip("/") in DISCOVERY:
            record(200)
            handler._send_json(200, DISCOVERY[path.rstrip("/")])
            return True
        target = _parse(path)
        if target is None:
            return False
        resource, namespace = target
        params = parse_qs(query)
        watch = params.get("watch", [""])[0].lower() in ("true", "1")  # kubernetes_asyncio sends "True"
        if method == "POST" and resource == "events" and namespace:
            record(201)
            body = {"kind": "Event", "apiVersion": "v1",
                    "metadata": {"name": "event", "namespace": namespace}}
            handler._send_json(201, body)
            return True
        if method != "GET" or (resource == "pods" and namespace and not watch):
            return False  # the fixed pod list, or a verb this store does not serve
        record(200)
        if watch:
            since = int(params.get("resourceVersion", ["0"])[0] or 0)
            timeout = float(params.get("timeoutSeconds", [DEFAULT_WATCH_SECONDS])[0])
            self._stream(handler, resource, namespace, since, timeout)
        else:
            handler._send_json(200, self._list(resource, namespace))
        return True

    def _list(self, resource: str, namespace: Optional[str]) -> dict[str, Any]:
        with self._cond:
            items = [copy.deepcopy(o) for (r, ns, _), o in self._objects.items()
                     if r == resource and namespace in (None, ns)]
            rv = self._rv
        kind = CORE_RESOURCES.get(resource, ("CustomResourceDefinition", False))[0]
        api_version = "apiextensions.k8s.io/v1" if resource == CRD_RESOURCE else "v1"
        return {"kind": f"{kind}List", "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)},
                "items": items}

    def _stream(
        self, handler: Any, resource: str, namespace: Optional[str], since: int, timeout: float
    ) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        deadline = time.monotonic() + timeout
        with self._cond:
            generation = self._generation
            self.watches_served += 1
        try:
            while True:
                with self._cond:
                    if generation != self._generation or self._closed:
                        break  # ended from the server side: what comes next goes to the reconnect
                    events = [(rv, kind, obj) for rv, r, kind, obj in self._log
                              if rv > since and r == resource
                              and namespace in (None, obj["metadata"].get("namespace", ""))]
                    left = deadline - time.monotonic()
                    if not events and left > 0:
                        self._cond.wait(min(left, 1.0))
                        continue
                for rv, kind, obj in events:
                    _chunk(handler, json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                    since = rv
                if not events:
                    break  # closed, timed out, or ended from the server side
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            handler.close_connection = True  # the client went away


def _chunk(handler: Any, data: bytes) -> None:
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def _parse(path: str) -> Optional[tuple[str, Optional[str]]]:
    """(resource, namespace or None) for a collection path this store serves."""
    parts = [p for p in path.split("/") if p]
    if parts[:3] == ["apis", "apiextensions.k8s.io", "v1"] and parts[3:] == [CRD_RESOURCE]:
        return CRD_RESOURCE, None
    if parts[:2] != ["api", "v1"]:
        return None
    rest = parts[2:]
    if len(rest) == 1 and rest[0] in CORE_RESOURCES:
        return rest[0], None
    if len(rest) == 3 and rest[0] == "namespaces" and rest[2] in CORE_RESOURCES:
        return rest[2], rest[1]
    return None

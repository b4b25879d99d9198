"""A Kubernetes API server stand-in that speaks the real HTTP protocol, for tests and the simulator.

It serves `pods`, `services`, `nodes` and `secrets` (core/v1), `deployments` (apps/v1) and
`endpointslices` (discovery.k8s.io/v1, what kube-proxy reads) the way
kube-apiserver does, closely enough for the real `kubernetes` client and for any informer-style
list+watch loop:

- list (`GET /api/v1/pods`, `/api/v1/namespaces/NS/pods`, ...) returns `<Kind>List` with
  `metadata.resourceVersion`; `limit` + `continue` paginate; `resourceVersion` older than the
  compaction point gives HTTP 410 Gone;
- watch (`?watch=true`) streams JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}` over chunked HTTP; with no resourceVersion (or "0") it starts with ADDED for every
  object; from a resourceVersion older than the compaction point it sends one ERROR event carrying
  a 410 `Status` (what kube-apiserver does: "too old resource version"); `allowWatchBookmarks=true`
  gets BOOKMARK events every `bookmark_interval` seconds; `timeoutSeconds` ends the stream;
- lists take equality-based `labelSelector`s (`a=b,c!=d,e`);
- `POST` creates and `DELETE` removes an object; `GET .../pods/NAME/log` serves what `append_log`
  added, and with `follow=true` streams until the pod's phase is Succeeded or Failed;
- `fieldSelector` (`spec.nodeName=N`, `metadata.namespace=X`, `!=` too); an object that stops
  matching a watch's selector is sent to it as DELETED, one that starts matching as ADDED.

TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`) answers as kube-apiserver does for
projected ServiceAccount tokens: `issue_token(namespace, service_account, pod)` mints one bound to a
pod and audiences; a review returns `status.authenticated`, the `system:serviceaccount:NS:NAME`
user with the pod's name and uid in `user.extra`, or `authenticated: false` and an error for an
unknown, revoked or wrong-audience token. `reviewers` (bearer tokens allowed to create reviews,
None = anyone) stands in for RBAC: others get 403 Forbidden.

Objects are changed programmatically (`add`, `update`, `delete`); `stop`/`start`/`restart` take the
server off and on the same port, and `compact` forgets history so older watches get 410. It uses
only the standard library so the simulator can ship it. `make_pod`, `make_service` and `make_node`
build objects shaped like the real ones (containerd ids, podIPs, owner references), and
`make_endpoint_slice` a Service's EndpointSlice as the EndpointSlice controller writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

JsonObj = dict[str, Any]

# resource (URL plural) -> (kind, namespaced)
RESOURCES: dict[str, tuple[str, bool]] = {
    "pods": ("Pod", True),
    "services": ("Service", True),
    "nodes": ("Node", False),
    "secrets": ("Secret", True),
    "deployments": ("Deployment", True),
    "endpointslices": ("EndpointSlice", True),
}
# resources outside the core group -> their apiVersion (served under /apis/<group>/<version>/)
GROUP_VERSIONS: dict[str, str] = {"deployments": "apps/v1", "endpointslices": "discovery.k8s.io/v1"}


def api_version(resource: str) -> str:
    return GROUP_VERSIONS.get(resource, "v1")


def parse_label_selector(sel: str) -> list[tuple[str, str | None, bool]]:
    """'a=b,c!=d,e' -> [(a, b, True), (c, d, False), (e, None, True)] (equality-based selectors and
    existence; set-based ones are not served)."""
    out: list[tuple[str, str | None, bool]] = []
    for term in filter(None, (t.strip() for t in sel.split(","))):
        if " in " in term or " notin " in term or term.startswith("!"):
            raise ValueError(f"unsupported label selector {term!r}")
        if "!=" in term:
            k, v = term.split("!=", 1)
            out.append((k.strip(), v.strip(), False))
        elif "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            out.append((k.strip(), v.strip(), True))
        else:
            out.append((term, None, True))
    return out


def _labels_match(obj: Mapping[str, Any], sel: list[tuple[str, str | None, bool]]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for k, v, eq in sel:
        if v is None:
            if k not in labels:
                return False
        elif (labels.get(k) == v) != eq:
            return False
    return True


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Change:
    rv: int
    resource: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: JsonObj
    old: JsonObj | None


def _field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def parse_field_selector(sel: str) -> list[tuple[str, str, bool]]:
    """`a.b=x,c!=y` -> [(path, value, equal)]; raises ValueError on a malformed term."""
    out: list[tuple[str, str, bool]] = []
    for term in filter(None, (t.strip() for t in sel.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            out.append((k.strip(), v.strip(), False))
        elif "==" in term:
            k, v = term.split("==", 1)
            out.append((k.strip(), v.strip(), True))
        elif "=" in term:
            k, v = term.split("=", 1)
            out.append((k.strip(), v.strip(), True))
        else:
            raise ValueError(f"invalid field selector term {term!r}")
    return out


def _matches(obj: Mapping[str, Any] | None, sel: list[tuple[str, str, bool]], namespace: str | None) -> bool:
    if obj is None:
        return False
    if namespace is not None and _field(obj, "metadata.namespace") != namespace:
        return False
    return all((_field(obj, k) == v) == eq for k, v, eq in sel)


class _Store:
    """Objects, the global resourceVersion and the change history, behind one condition variable."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 1
        self.compacted_rv = 0  # watches/lists from an rv below this get 410
        self.objects: dict[str, dict[tuple[str, str], JsonObj]] = {r: {} for r in RESOURCES}
        self.history: list[_Change] = []

    def key(self, resource: str, obj: Mapping[str, Any]) -> tuple[str, str]:
        namespaced = RESOURCES[resource][1]
        ns = _field(obj, "metadata.namespace") if namespaced else ""
        return ns, _field(obj, "metadata.name")

    def put(self, resource: str, obj: JsonObj, must_exist: bool | None) -> JsonObj:
        with self.cond:
            obj = copy.deepcopy(obj)
            kind, namespaced = RESOURCES[resource]
            obj.setdefault("kind", kind)
            obj.setdefault("apiVersion", api_version(resource))
            meta = obj.setdefault("metadata", {})
            if namespaced:
                meta.setdefault("namespace", "default")
            if not meta.get("name"):
                raise ValueError("metadata.name is required")
            k = self.key(resource, obj)
            old = self.objects[resource].get(k)
            if must_exist is True and old is None:
                raise KeyError(f"{resource} {k} does not exist")
            if must_exist is False and old is not None:
                raise KeyError(f"{resource} {k} already exists")
            if old is not None:
                meta.setdefault("uid", old["metadata"]["uid"])
                meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"])
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[resource][k] = obj
            self.history.append(_Change(self.rv, resource, "MODIFIED" if old else "ADDED", obj, old))
            self.cond.notify_all()
            return copy.deepcopy(obj)

    def remove(self, resource: str, namespace: str, name: str) -> JsonObj:
        with self.cond:
            k = (namespace if RESOURCES[resource][1] else "", name)
            old = self.objects[resource].pop(k)
            obj = copy.deepcopy(old)
            obj["metadata"].setdefault("deletionTimestamp", now_rfc3339())
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.history.append(_Change(self.rv, resource, "DELETED", obj, old))
            self.cond.notify_all()
            return copy.deepcopy(obj)

    def compact(self) -> None:
        with self.cond:
            self.compacted_rv = self.rv
            self.history.clear()
            self.cond.notify_all()


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: FakeApiServer) -> None:
        self.owner = owner
        self.stopping = threading.Event()
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request stderr lines
        return

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # --- responses ----------------------------------------------------------------------------
    def _send_json(self, code: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send_json(code, status_object(code, reason, message))

    def _chunk(self, obj: Mapping[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self) -> None:
        """TokenReview, or the creation of an object."""
        if [p for p in urlsplit(self.path).path.split("/") if p] == [
            "apis",
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
        ]:
            self._token_review()
        else:
            self._create()

    # --- TokenReview ------------------------------------------------------------------------------
    def _token_review(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        with owner.lock:
            owner.requests.append(f"POST {self.path}")
        length = int(self.headers.get("Content-Length", "0") or 0)
        raw = self.rfile.read(length) if length else b""
        if [p for p in url.path.split("/") if p] != ["apis", "authentication.k8s.io", "v1", "tokenreviews"]:
            self._status(404, "NotFound", f"the server could not find the requested resource {url.path}")
            return
        caller = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if owner.reviewers is not None and caller not in owner.reviewers:
            self._status(
                403,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden: User cannot "
                'create resource "tokenreviews" in API group "authentication.k8s.io" '
                "at the cluster scope",
            )
            return
        try:
            body = json.loads(raw or b"{}")
            spec = body.get("spec") or {}
            token = str(spec.get("token", ""))
            audiences = list(spec.get("audiences") or [])
        except (ValueError, AttributeError):
            self._status(400, "BadRequest", "malformed TokenReview")
            return
        with owner.lock:
            owner.reviews += 1
            bound = owner.tokens.get(token)
        status: JsonObj
        if bound is None:
            status = {"authenticated": False, "error": "[invalid bearer token, service account token is not valid]"}
        elif audiences and not set(audiences) & set(bound.audiences):
            status = {
                "authenticated": False,
                "error": f"[invalid bearer token, token audiences {bound.audiences} is invalid for the "
                f"target audiences {audiences}]",
            }
        else:
            ns = bound.namespace
            status = {
                "authenticated": True,
                "audiences": audiences or list(bound.audiences),
                "user": {
                    "username": f"system:serviceaccount:{ns}:{bound.service_account}",
                    "uid": bound.sa_uid,
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                    "extra": {
                        "authentication.kubernetes.io/pod-name": [bound.pod],
                        "authentication.kubernetes.io/pod-uid": [bound.pod_uid],
                        "authentication.kubernetes.io/credential-id": [f"JTI={bound.jti}"],
                    },
                },
            }
        self._send_json(
            201,
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
        )

    # --- routing ------------------------------------------------------------------------------
    def _route(self, parts: list[str]) -> tuple[str, str | None, list[str]] | None:
        """(resource, namespace, rest after the resource) of an API path, None if not served."""
        if parts[:2] == ["api", "v1"]:
            group_version, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace: str | None = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in RESOURCES or api_version(rest[0]) != group_version:
            return None
        return rest[0], namespace, rest[1:]

    def _body(self) -> JsonObj | None:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n) or b"null")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _create(self) -> None:
        """Create (`POST /api/v1/namespaces/NS/pods`): 201 with the stored object, 409 if it exists."""
        owner = self.server.owner
        url = urlsplit(self.path)
        with owner.lock:
            owner.requests.append(f"POST {url.path}")
        route = self._route([p for p in url.path.split("/") if p])
        body = self._body()
        if route is None or route[2] or body is None:
            self._status(
                404 if route is None else 400,
                "NotFound" if route is None else "BadRequest",
                f"cannot create at {url.path}",
            )
            return
        resource, namespace, _ = route
        meta = body.setdefault("metadata", {})
        if RESOURCES[resource][1]:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        body.setdefault("kind", RESOURCES[resource][0])
        if resource == "pods":
            body.setdefault("status", {"phase": "Pending"})
        try:
            created = owner.store.put(resource, body, must_exist=False)
        except KeyError as e:
            self._status(409, "AlreadyExists", str(e))
            return
        except ValueError as e:
            self._status(422, "Invalid", str(e))
            return
        self._send_json(201, created)

    def do_DELETE(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        with owner.lock:
            owner.requests.append(f"DELETE {url.path}")
        route = self._route([p for p in url.path.split("/") if p])
        if route is None or len(route[2]) != 1:
            self._status(404, "NotFound", f"the server could not find the requested resource {url.path}")
            return
        resource, namespace, (name,) = route
        try:
            gone = owner.store.remove(resource, namespace or "", name)
        except KeyError:
            self._status(404, "NotFound", f'{resource} "{name}" not found')
            return
        self._send_json(200, gone)

    def _pod_log(self, namespace: str, name: str, follow: bool) -> None:
        """The container log set with FakeApiServer.append_log; with follow, streamed until the pod
        has Succeeded or Failed (what the kubelet does when the container exits)."""
        owner = self.server.owner
        store = owner.store
        with store.cond:
            if (namespace, name) not in store.objects["pods"]:
                self._status(404, "NotFound", f'pods "{name}" not found')
                return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            while True:
                with store.cond:
                    text = owner.logs.get((namespace, name), b"")
                    pod = store.objects["pods"].get((namespace, name))
                    done = pod is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed")
                    if len(text) == sent and not done and follow and not self.server.stopping.is_set():
                        store.cond.wait(0.2)
                        continue
                chunk, sent = text[sent:], len(text)
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                if done or not follow or self.server.stopping.is_set():
                    break
            self._end_chunks()
        except OSError:
            return

    def do_GET(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        with owner.lock:
            owner.requests.append(f"GET {self.path}")
        if parts in (["version"], ["livez"], ["readyz"], ["healthz"]):
            self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-tcpscope-fake"})
            return
        route = self._route(parts)
        if route is not None and route[0] == "pods" and route[1] and len(route[2]) == 2 and route[2][1] == "log":
            self._pod_log(route[1], route[2][0], q.get("follow", "").lower() in ("true", "1"))
            return
        if route is None or len(route[2]) > 1:
            self._status(404, "NotFound", f"the server could not find the requested resource {url.path}")
            return
        resource, namespace, rest = route[0], route[1], [route[0], *route[2]]
        if namespace is not None and not RESOURCES[resource][1]:
            self._status(404, "NotFound", f"{resource} is not namespaced")
            return
        if len(rest) == 2:
            self._get_one(resource, namespace or "", rest[1])
            return
        try:
            sel = parse_field_selector(q.get("fieldSelector", ""))
            labels = parse_label_selector(q.get("labelSelector", ""))
        except ValueError as e:
            self._status(400, "BadRequest", str(e))
            return
        if q.get("watch", "").lower() in ("true", "1"):
            with owner.lock:
                owner.watches_started += 1
            self._watch(resource, namespace, sel, q)
        else:
            self._list(resource, namespace, sel, q, labels)

    def _get_one(self, resource: str, namespace: str, name: str) -> None:
        store = self.server.owner.store
        with store.cond:
            obj = store.objects[resource].get((namespace if RESOURCES[resource][1] else "", name))
            body = copy.deepcopy(obj) if obj else None
        if body is None:
            self._status(404, "NotFound", f'{resource} "{name}" not found')
        else:
            self._send_json(200, body)

    def _list(
        self,
        resource: str,
        namespace: str | None,
        sel: list[tuple[str, str, bool]],
        q: Mapping[str, str],
        labels: list[tuple[str, str | None, bool]] | None = None,
    ) -> None:
        store = self.server.owner.store
        rv_param = q.get("resourceVersion", "")
        with store.cond:
            if (
                rv_param not in ("", "0")
                and q.get("resourceVersionMatch") == "Exact"
                and (not rv_param.isdigit() or int(rv_param) < store.compacted_rv)
            ):
                self._status(410, "Expired", f"too old resource version: {rv_param} ({store.rv})")
                return
            items = sorted(
                (
                    copy.deepcopy(o)
                    for o in store.objects[resource].values()
                    if _matches(o, sel, namespace) and _labels_match(o, labels or [])
                ),
                key=lambda o: store.key(resource, o),
            )
            rv = store.rv
        cont = q.get("continue", "")
        start = 0
        if cont:
            try:
                c_rv, c_start = (int(x) for x in cont.split(":", 1))
            except ValueError:
                self._status(400, "BadRequest", "invalid continue token")
                return
            if c_rv < store.compacted_rv:
                self._status(410, "Expired", "The provided continue parameter is too old")
                return
            start = c_start
        limit = int(q.get("limit", "0") or 0)
        meta: JsonObj = {"resourceVersion": str(rv)}
        page = items[start:]
        if limit > 0 and len(page) > limit:
            page = page[:limit]
            meta["continue"] = f"{rv}:{start + limit}"
            meta["remainingItemCount"] = len(items) - start - limit
        kind = RESOURCES[resource][0]
        self._send_json(
            200, {"kind": f"{kind}List", "apiVersion": api_version(resource), "metadata": meta, "items": page}
        )

    def _watch(
        self, resource: str, namespace: str | None, sel: list[tuple[str, str, bool]], q: Mapping[str, str]
    ) -> None:
        srv = self.server
        store = srv.owner.store
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(q.get("timeoutSeconds", "0") or 0) or 1800.0
        deadline = time.monotonic() + timeout
        rv_param = q.get("resourceVersion", "")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            start = self._watch_start(resource, namespace, sel, rv_param)
            if start is None:
                self._chunk(_expired_event(rv_param, store.rv))
                self._end_chunks()
                return  # ended cleanly (last chunk sent): the connection stays open for another request
            initial, last = start
            for o in initial:
                self._chunk({"type": "ADDED", "object": o})
            self._watch_stream(resource, namespace, sel, last, deadline, bookmarks)
            if not srv.stopping.is_set():
                self._end_chunks()
        except OSError:
            pass  # the client went away or stop() shut the socket
        self.close_connection = True

    def _watch_start(
        self, resource: str, namespace: str | None, sel: list[tuple[str, str, bool]], rv_param: str
    ) -> tuple[list[JsonObj], int] | None:
        """(the objects to send as ADDED first, the version the watch starts after); None if rv_param is
        older than the compaction point (or not a version). No resourceVersion (or "0"): every matching
        object, from now."""
        store = self.server.owner.store
        with store.cond:
            if rv_param in ("", "0"):
                initial = [copy.deepcopy(o) for o in store.objects[resource].values() if _matches(o, sel, namespace)]
                return initial, store.rv
            if not rv_param.isdigit() or int(rv_param) < store.compacted_rv:
                return None
            return [], int(rv_param)

    def _watch_stream(
        self,
        resource: str,
        namespace: str | None,
        sel: list[tuple[str, str, bool]],
        last: int,
        deadline: float,
        bookmarks: bool,
    ) -> None:
        """Send the changes after version `last` as they happen, and a BOOKMARK every bookmark_interval if
        asked, until the deadline, stop(), or a compaction past `last` (410, which ends the watch)."""
        srv = self.server
        kind = RESOURCES[resource][0]
        next_bookmark = time.monotonic() + srv.owner.bookmark_interval
        while not srv.stopping.is_set() and time.monotonic() < deadline:
            out, last, gone = self._watch_changes(resource, namespace, sel, last)
            for ev in out:
                self._chunk(ev)
            if gone:
                break
            if bookmarks and time.monotonic() >= next_bookmark:
                self._chunk(_bookmark_event(kind, last))
                next_bookmark = time.monotonic() + srv.owner.bookmark_interval

    def _watch_changes(
        self, resource: str, namespace: str | None, sel: list[tuple[str, str, bool]], last: int
    ) -> tuple[list[JsonObj], int, bool]:
        """(the events after version `last` as this watch sees them, the version they bring it to, gone):
        waits up to 0.1 s when there are none; gone when history was compacted past `last`."""
        store = self.server.owner.store
        with store.cond:
            if last < store.compacted_rv:
                # history compacted under a live watch: kube-apiserver ends it with 410
                return [_expired_event(last, store.rv)], store.rv, True
            out: list[JsonObj] = []
            for ch in store.history:
                if ch.rv > last and ch.resource == resource and (ev := _watch_event(ch, sel, namespace)) is not None:
                    out.append(ev)
            last = store.rv
            if not out:
                store.cond.wait(timeout=0.1)
            return out, last, False

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _watch_event(ch: _Change, sel: list[tuple[str, str, bool]], namespace: str | None) -> JsonObj | None:
    """The event a watch with this selector gets for a change: ADDED (the object starts matching),
    MODIFIED (still matches), DELETED (deleted, or stops matching), or None (it never matched)."""
    now_m = _matches(ch.obj, sel, namespace) if ch.type != "DELETED" else False
    was_m = _matches(ch.old, sel, namespace)
    if now_m:
        etype = "MODIFIED" if was_m else "ADDED"
    elif was_m:
        etype = "DELETED"
    else:
        return None
    return {"type": etype, "object": copy.deepcopy(ch.obj)}


def _expired_event(version: object, current: int) -> JsonObj:
    """The ERROR event carrying 410 Gone that ends a watch from a version older than the compaction point."""
    return {
        "type": "ERROR",
        "object": status_object(410, "Expired", f"too old resource version: {version} ({current})"),
    }


def _bookmark_event(kind: str, rv: int) -> JsonObj:
    """A BOOKMARK: the watch has seen everything up to rv."""
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": kind,
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(rv), "annotations": {"k8s.io/initial-events-end": "true"}},
        },
    }


def status_object(code: int, reason: str, message: str) -> JsonObj:
    """A `meta/v1 Status` as kube-apiserver returns it for errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass(frozen=True)
class BoundToken:
    """A projected ServiceAccount token as the API server knows it: its account, pod and audiences."""

    namespace: str
    service_account: str
    pod: str
    pod_uid: str
    audiences: tuple[str, ...]
    sa_uid: str
    jti: str


class FakeApiServer:
    """The stand-in: state survives stop/start (like etcd behind a restarted kube-apiserver)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, bookmark_interval: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.store = _Store()
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.watches_started = 0
        self.tokens: dict[str, BoundToken] = {}
        self.reviews = 0  # TokenReviews answered
        self.reviewers: set[str] | None = None  # bearer tokens allowed to create TokenReviews (RBAC)
        self.logs: dict[tuple[str, str], bytes] = {}  # (namespace, pod) -> its container's log
        self._srv: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._srv is not None

    def start(self) -> FakeApiServer:
        if self._srv is not None:
            return self
        srv = _HttpServer((self.host, self.port), self)
        self.port = srv.server_address[1]
        self._srv = srv
        self._thread = threading.Thread(
            target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fakeapi-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (watches see the stream break)."""
        srv, self._srv = self._srv, None
        if srv is None:
            return
        srv.stopping.set()
        with self.store.cond:
            self.store.cond.notify_all()
        srv.shutdown()
        with srv.conns_lock:
            conns = list(srv.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        srv.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def restart(self, compact: bool = False) -> None:
        """Stop, optionally forget history (watches resuming from old versions then get 410), start."""
        self.stop()
        if compact:
            self.store.compact()
        self.start()

    def compact(self) -> None:
        self.store.compact()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig (JSON is YAML) pointing at this server; returns the path."""
        path = Path(path)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        path.write_text(json.dumps(cfg, indent=1))
        return path

    # --- ServiceAccount tokens -------------------------------------------------------------
    def issue_token(
        self,
        namespace: str,
        service_account: str,
        pod: str,
        pod_uid: str = "",
        audiences: Iterable[str] = ("tcpscope-collector",),
    ) -> str:
        """A projected token for `pod` (its uid from the stored pod unless given), as the kubelet
        would mount it. Looks like a JWT; only this server can review it."""
        if not pod_uid:
            stored = self.get("pods", pod, namespace)
            pod_uid = str((stored or {}).get("metadata", {}).get("uid", "")) or str(uuid.uuid4())
        token = "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(48) + "." + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = BoundToken(
                namespace,
                service_account,
                pod,
                pod_uid,
                tuple(audiences),
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{service_account}")),
                str(uuid.uuid4()),
            )
        return token

    def revoke_token(self, token: str) -> None:
        with self.lock:
            self.tokens.pop(token, None)

    # --- objects ----------------------------------------------------------------------------
    def add(self, obj: JsonObj) -> JsonObj:
        return self.store.put(_resource_of(obj), obj, must_exist=False)

    def update(self, obj: JsonObj) -> JsonObj:
        return self.store.put(_resource_of(obj), obj, must_exist=True)

    def apply(self, obj: JsonObj) -> JsonObj:
        return self.store.put(_resource_of(obj), obj, must_exist=None)

    def delete(self, resource: str, name: str, namespace: str = "default") -> JsonObj:
        return self.store.remove(resource, namespace, name)

    def get(self, resource: str, name: str, namespace: str = "default") -> JsonObj | None:
        with self.store.cond:
            o = self.store.objects[resource].get((namespace if RESOURCES[resource][1] else "", name))
            return copy.deepcopy(o) if o else None

    def append_log(self, name: str, text: bytes, namespace: str = "default") -> None:
        """Add to a pod's container log (what `GET .../pods/NAME/log` serves)."""
        with self.store.cond:
            self.logs[(namespace, name)] = self.logs.get((namespace, name), b"") + text
            self.store.cond.notify_all()

    @property
    def resource_version(self) -> int:
        with self.store.cond:
            return self.store.rv


def _resource_of(obj: Mapping[str, Any]) -> str:
    kind = obj.get("kind", "")
    for resource, (k, _) in RESOURCES.items():
        if k == kind:
            return resource
    raise ValueError(f"unsupported kind {kind!r}; supported: {', '.join(k for k, _ in RESOURCES.values())}")


# --- object builders -------------------------------------------------------------------------


def container_id() -> str:
    """A random 64-hex runtime container id."""
    return secrets.token_hex(32)


def make_pod(
    name: str,
    namespace: str = "default",
    node: str = "node-1",
    *,
    uid: str | None = None,
    ips: Iterable[str] = (),
    containers: Mapping[str, str] | None = None,
    init_containers: Mapping[str, str] | None = None,
    ephemeral_containers: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    host_network: bool = False,
    host_ip: str = "",
    phase: str = "Running",
    runtime: str = "containerd",
) -> JsonObj:
    """A Pod as kube-apiserver returns it; containers map name -> 64-hex id ('' = not started yet)."""
    containers = {"app": container_id()} if containers is None else containers

    def statuses(m: Mapping[str, str] | None) -> list[JsonObj]:
        out = []
        for cname, cid in (m or {}).items():
            st: JsonObj = {
                "name": cname,
                "image": f"registry.example/{cname}:1",
                "imageID": f"registry.example/{cname}@sha256:{'0' * 64}" if cid else "",
                "ready": bool(cid),
                "restartCount": 0,
                "started": bool(cid),
            }
            if cid:
                st["containerID"] = f"{runtime}://{cid}"
                st["state"] = {"running": {"startedAt": now_rfc3339()}}
            else:
                st["state"] = {"waiting": {"reason": "ContainerCreating"}}
            out.append(st)
        return out

    ip_list = list(ips)
    meta: JsonObj = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "labels": dict(labels or {}),
        "creationTimestamp": now_rfc3339(),
    }
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "batch/v1" if owner[0] in ("Job", "CronJob") else "apps/v1",
                "kind": owner[0],
                "name": owner[1],
                "uid": str(uuid.uuid4()),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    status: JsonObj = {
        "phase": phase,
        "hostIP": host_ip,
        "startTime": now_rfc3339(),
        "containerStatuses": statuses(containers),
    }
    if host_ip:
        status["hostIPs"] = [{"ip": host_ip}]
    if ip_list:
        status["podIP"] = ip_list[0]
        status["podIPs"] = [{"ip": i} for i in ip_list]
    if init_containers:
        status["initContainerStatuses"] = statuses(init_containers)
    if ephemeral_containers:
        status["ephemeralContainerStatuses"] = statuses(ephemeral_containers)
    spec: JsonObj = {
        "nodeName": node,
        "hostNetwork": host_network,
        "containers": [{"name": c, "image": f"registry.example/{c}:1"} for c in containers],
    }
    if init_containers:
        spec["initContainers"] = [{"name": c, "image": f"registry.example/{c}:1"} for c in init_containers]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}


def make_service(
    name: str,
    namespace: str = "default",
    cluster_ips: Iterable[str] = (),
    ports: Iterable[int] = (80,),
    selector: Mapping[str, str] | None = None,
) -> JsonObj:
    ips = list(cluster_ips)
    spec: JsonObj = {
        "type": "ClusterIP",
        "selector": dict(selector or {}),
        "ports": [{"port": p, "protocol": "TCP", "targetPort": p} for p in ports],
    }
    if ips:
        spec["clusterIP"] = ips[0]
        spec["clusterIPs"] = ips
    return {"kind": "Service", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def make_service_ports(
    name: str,
    namespace: str,
    cluster_ip: str,
    ports: Iterable[tuple[str, int, int]],
    selector: Mapping[str, str] | None = None,
    node_ports: Mapping[str, int] | None = None,
) -> JsonObj:
    """A Service with named ports (name, port, targetPort); type NodePort when node_ports names any."""
    spec: JsonObj = {
        "type": "NodePort" if node_ports else "ClusterIP",
        "selector": dict(selector or {}),
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ports": [
            {"name": n, "port": p, "protocol": "TCP", "targetPort": tp}
            | ({"nodePort": node_ports[n]} if node_ports and n in node_ports else {})
            for n, p, tp in ports
        ],
    }
    if node_ports:
        spec["externalTrafficPolicy"] = "Cluster"
    return {"kind": "Service", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def make_endpoint_slice(
    service: str,
    namespace: str,
    endpoints: Iterable[tuple[str, str, str]],
    ports: Iterable[tuple[str, int]],
) -> JsonObj:
    """The EndpointSlice of a Service (one slice, as the controller writes one for up to 100
    endpoints): endpoints (pod ip, node name, pod name), ports (name, target port)."""
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": f"{service}-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{namespace}/{service}').hex[:5]}",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": service,
                    "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"service/{namespace}/{service}")),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
            }
            for ip, node, pod in endpoints
        ],
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def make_node(
    name: str, internal_ips: Iterable[str] = (), external_ips: Iterable[str] = (), pod_cidrs: Iterable[str] = ()
) -> JsonObj:
    addrs = [{"type": "Hostname", "address": name}]
    addrs += [{"type": "InternalIP", "address": a} for a in internal_ips]
    addrs += [{"type": "ExternalIP", "address": a} for a in external_ips]
    cidrs = list(pod_cidrs)
    spec: JsonObj = {"podCIDRs": cidrs} if cidrs else {}
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": spec,
        "status": {"addresses": addrs},
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m tcpscope_sim.fakeapi --port P --kubeconfig K`: serve until interrupted."""
    ap = argparse.ArgumentParser(prog="tcpscope-fakeapi", description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--kubeconfig", help="write a kubeconfig for the server here")
    ap.add_argument("--bookmark-interval", type=float, default=5.0)
    ns = ap.parse_args(argv)
    srv = FakeApiServer(ns.host, ns.port, ns.bookmark_interval).start()
    if ns.kubeconfig:
        srv.write_kubeconfig(ns.kubeconfig)
    print(f"fakeapi: serving on {srv.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

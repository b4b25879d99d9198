"""The Kubernetes API boundary and the list+watch loop (a "reflector") that keeps a cache current.

`KubeApi` is the narrow Protocol the caches depend on: list a resource (one page) and open a watch
stream. `ClientKubeApi` implements it with the official `kubernetes` client, reading raw JSON
(no model deserialisation: a 150,000-pod list costs seconds less and the caches keep only what
they need). `Reflector` runs list -> watch in a background thread: it tracks the resourceVersion
(bookmarks included), relists on 410 Gone, and reconnects with exponential backoff and jitter.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, Self

log = logging.getLogger(__name__)

JsonObj = dict[str, Any]


class GoneError(Exception):
    """The API server no longer has the requested resourceVersion (HTTP 410): relist."""


class WatchStream(Protocol):
    def __iter__(self) -> Iterator[JsonObj]: ...

    def close(self) -> None:
        """Abort the stream from another thread (the iterator then ends or raises)."""
        ...


class KubeApi(Protocol):
    """What the caches need from the API server, nothing more."""

    def list(self, resource: str, field_selector: str, limit: int, continue_token: str) -> JsonObj:
        """One page of a list: {'metadata': {'resourceVersion', 'continue'?}, 'items': [...]}."""
        ...

    def watch(self, resource: str, field_selector: str, resource_version: str, timeout_s: int) -> WatchStream: ...


class PodSink(Protocol):
    """Receives a reflector's view: the full set on every (re)list, then each change."""

    def replace(self, items: list[JsonObj]) -> None: ...

    def apply(self, event_type: str, obj: JsonObj) -> None: ...


def load_api_client(kubeconfig: str | None) -> Any:
    """A `kubernetes.client.ApiClient` from a kubeconfig file, else from the in-cluster service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    # no hidden urllib3 retries: the reflector owns retrying (backoff with jitter, counted)
    cfg.retries = False
    return client.ApiClient(cfg)


class _ClientWatch:
    def __init__(self, resp: Any) -> None:
        self._resp = resp

    def __iter__(self) -> Iterator[JsonObj]:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            for line in iter_resp_lines(self._resp):  # type: ignore[no-untyped-call]
                if line.strip():
                    yield json.loads(line)
        finally:
            self._resp.release_conn()

    def close(self) -> None:
        # shutting the socket down unblocks a reader waiting for the next line
        try:
            sock = getattr(getattr(self._resp, "connection", None), "sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ClientKubeApi:
    """`KubeApi` over the official client (core/v1 pods, services, nodes; discovery.k8s.io/v1
    endpointslices)."""

    def __init__(self, api_client: Any, connect_timeout: float = 5.0, read_timeout: float = 120.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self._timeouts = (connect_timeout, read_timeout)

    def _fn(self, resource: str) -> Any:
        return {
            "pods": self._core.list_pod_for_all_namespaces,
            "services": self._core.list_service_for_all_namespaces,
            "nodes": self._core.list_node,
            "endpointslices": self._discovery.list_endpoint_slice_for_all_namespaces,
        }[resource]

    def list(self, resource: str, field_selector: str, limit: int, continue_token: str) -> JsonObj:
        from kubernetes.client.exceptions import ApiException

        kw: dict[str, Any] = {"_preload_content": False, "_request_timeout": self._timeouts}
        if field_selector:
            kw["field_selector"] = field_selector
        if limit:
            kw["limit"] = limit
        if continue_token:
            kw["_continue"] = continue_token
        try:
            resp = self._fn(resource)(**kw)
        except ApiException as e:
            if e.status == 410:
                raise GoneError(str(e.reason)) from e
            raise
        out: JsonObj = json.loads(resp.data)
        return out

    def watch(self, resource: str, field_selector: str, resource_version: str, timeout_s: int) -> WatchStream:
        kw: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_s,
            "_preload_content": False,
            "_request_timeout": self._timeouts,
        }
        if field_selector:
            kw["field_selector"] = field_selector
        if resource_version:
            kw["resource_version"] = resource_version
        return _ClientWatch(self._fn(resource)(**kw))


class Reflector:
    """list+watch one resource into a sink, in a daemon thread, until `close()`.

    Counters: lists (first and re-), relists (after 410 or an error), gone (410s), api_errors,
    watch_restarts, events, bookmarks. `synced` is set after the first successful list.
    """

    def __init__(
        self,
        api: KubeApi,
        resource: str,
        sink: PodSink,
        *,
        field_selector: str = "",
        page_size: int = 500,
        watch_timeout_s: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.sink = sink
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self.synced = threading.Event()
        self.connected = False
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {
            "lists": 0,
            "relists": 0,
            "gone": 0,
            "api_errors": 0,
            "watch_restarts": 0,
            "events": 0,
            "bookmarks": 0,
        }

    def start(self) -> Reflector:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"reflector-{self.resource}", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self, prefix: str) -> dict[str, int]:
        with self._lock:
            out = {f"{prefix}.{k}": v for k, v in self.counters.items()}
        out[f"{prefix}.synced"] = int(self.synced.is_set())
        out[f"{prefix}.connected"] = int(self.connected)
        return out

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def _list_all(self) -> tuple[list[JsonObj], str]:
        items: list[JsonObj] = []
        token = ""
        while True:
            page = self.api.list(self.resource, self.field_selector, self.page_size, token)
            items.extend(page.get("items") or [])
            meta: Mapping[str, Any] = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def _run(self) -> None:
        rv = ""
        backoff = self.backoff_initial
        while not self._stop.is_set():
            try:
                if not rv:
                    items, rv = self._list_all()
                    self._count("lists")
                    if self.synced.is_set():
                        self._count("relists")
                    self.sink.replace(items)
                    self.synced.set()
                stream = self.api.watch(self.resource, self.field_selector, rv, self.watch_timeout_s)
                with self._lock:
                    self._stream = stream
                if self._stop.is_set():
                    stream.close()
                self.connected = True
                for ev in stream:
                    typ = ev.get("type", "")
                    obj = ev.get("object") or {}
                    if typ == "ERROR":
                        if obj.get("code") == 410:
                            raise GoneError(obj.get("message", "410 Gone"))
                        raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('message')}")
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = str(new_rv)
                    if typ == "BOOKMARK":
                        self._count("bookmarks")
                    else:
                        self._count("events")
                        self.sink.apply(typ, obj)
                    backoff = self.backoff_initial
                self._count("watch_restarts")  # the server ended the stream: re-watch from rv
                backoff = self.backoff_initial
            except GoneError:
                self._count("gone")
                rv = ""  # too old: relist, at once
            except Exception as e:
                if self._stop.is_set():
                    break
                self.connected = False
                self._count("api_errors")
                delay = backoff * (0.5 + self._rng.random())  # jitter: 0.5x .. 1.5x
                log.debug("%s list/watch failed (%s); retrying in %.2fs", self.resource, e, delay)
                self._stop.wait(delay)
                backoff = min(backoff * 2, self.backoff_max)
            finally:
                with self._lock:
                    self._stream = None
        self.connected = False


class Reflectors:
    """Reflectors started, synced and closed together: one per resource a cache is fed from (the
    remote-end index's pods, services and nodes; the backend index's services and endpointslices)."""

    def __init__(
        self, api: KubeApi, sinks: Mapping[str, PodSink], *, backoff_initial: float = 0.2, backoff_max: float = 30.0
    ) -> None:
        self.reflectors = {
            name: Reflector(api, name, sink, backoff_initial=backoff_initial, backoff_max=backoff_max)
            for name, sink in sinks.items()
        }

    def start(self) -> Self:
        for r in self.reflectors.values():
            r.start()
        return self

    def close(self) -> None:
        for r in self.reflectors.values():
            r.close()

    def synced(self) -> bool:
        """True once every resource has been listed at least once."""
        return all(r.synced.is_set() for r in self.reflectors.values())

    def wait_synced(self, timeout: float) -> bool:
        return all(r.synced.wait(timeout) for r in self.reflectors.values())

    def watch_stats(self, prefix: str) -> dict[str, int]:
        """Each reflector's counters, as `<prefix>.<resource>.<counter>`."""
        out: dict[str, int] = {}
        for name, r in self.reflectors.items():
            out.update(r.stats(f"{prefix}.{name}"))
        return out

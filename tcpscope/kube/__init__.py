"""Kubernetes metadata shared by the agent and the collector: who owns an address, and when.

    watch.py    KubeApi (the API boundary), ClientKubeApi, load_api_client, Reflector (list+watch)
    pods.py     PodInfo, pod_info, workload_of: what a Pod object tells about an end;
                fill_endpoint: an Endpoint from a pod's or an IP owner's metadata (either end)
    ipindex.py  IpIndex: ip -> pod / service / node over time, fed by the pod, service, node sinks
    remote_ends.py  RemoteResolver: the IpIndex kept current by three reflectors; fill_remote_ends:
                fill events' remote ends and count them by RemoteResult (pod, service, node, external, ...)
    backends.py BackendResolver: (address, target port) -> the Service ports whose EndpointSlices list
                it; fill_backend_ends: fill server events' local ends (Endpoint.services)

The agent (agent/enrich/) adds what only a node knows (cgroup -> pod); the collector
(collector/remote_ends.py) resolves remote ends cluster-wide. Neither imports the other.
"""

from __future__ import annotations

from tcpscope.kube.ipindex import IpIndex, IpOwner, NodeIpSink, PodIpSink, ServiceIpSink, normalize_ip
from tcpscope.kube.pods import PodInfo, fill_endpoint, pod_info, workload_of
from tcpscope.kube.remote_ends import RemoteResolver, RemoteResult, fill_remote_end, fill_remote_ends
from tcpscope.kube.watch import ClientKubeApi, GoneError, KubeApi, Reflector, load_api_client

__all__ = [
    "ClientKubeApi",
    "GoneError",
    "IpIndex",
    "IpOwner",
    "KubeApi",
    "NodeIpSink",
    "PodInfo",
    "PodIpSink",
    "Reflector",
    "RemoteResolver",
    "RemoteResult",
    "ServiceIpSink",
    "fill_endpoint",
    "fill_remote_end",
    "fill_remote_ends",
    "load_api_client",
    "normalize_ip",
    "pod_info",
    "workload_of",
]

"""Fixtures for the shared Kubernetes code: the API server stand-in and a client for it."""

from __future__ import annotations

from tests.support.kubeapi import fakeapi, kube_api, kubeconfig

__all__ = ["fakeapi", "kube_api", "kubeconfig"]

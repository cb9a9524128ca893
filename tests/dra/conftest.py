"""DRA driver fixtures: the kubelet stand-in (plugin manager and DRA manager) and the API server stand-in, each
started only for the tests that ask for them."""

from __future__ import annotations

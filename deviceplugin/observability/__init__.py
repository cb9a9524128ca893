"""Observability: Prometheus metrics and the node's labels and events. Watches what happens, never in the way."""

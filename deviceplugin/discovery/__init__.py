"""Discovery: read a sysfs root and a dev root (never write) and return plain records; kernel uevents say when
to read again. Nothing here knows of pools, kubelet or gRPC."""

"""The kubelet transports: how pools reach kubelet. `dpapi` is the Device Plugin API v1beta1 (a gRPC server per
pool, registration, and the watch on kubelet's socket dir). They only translate policy answers."""

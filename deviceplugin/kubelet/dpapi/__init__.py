"""The Device Plugin API v1beta1 transport: one DevicePlugin server per pool on its own unix socket, registered
with kubelet over kubelet.sock and served anew when kubelet restarts. `v1beta1/` holds the generated stubs."""

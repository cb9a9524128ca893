"""vnfio device plugin: advertises DPAA2 resource containers and vfio-pci functions to kubelet."""

"""vnfio CNI plugin: wires a pod's network namespace as veth, macvlan or bridge, with IPAM.

Nothing here is imported on the CNI start-up path except what `cni.main` needs for the command at hand.
"""

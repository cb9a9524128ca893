"""A generated sysfs + /dev tree shaped like an LX2160A board with DPAA2 containers and vfio-pci VFs.

There is no DPAA2 hardware in CI or on a laptop, so tests, the demo and `vnfio-device-plugin list
--sample-board` run against this tree. It follows the kernel's real layout: objects nest physically under
their container, every link is a relative symlink with the kernel's own depth, and file contents use the
kernel's formats (`(null)` overrides, `0x%04x` ids, `DEVTYPE=`/`DRIVER=`/`MODALIAS=` uevents). The tree is
shipped inside the package, not under hack/, so the image can show what the plugin would advertise before
any hardware is attached.

`SampleBoard` also mutates the tree the way the kernel would on bind, unbind, hot-plug and device-node
removal, so health and hot-plug tests change the same files a real kernel changes.
"""

from deviceplugin.sampleboard.board import SampleBoard, build_sample_board, full_sample_board
from deviceplugin.sampleboard.parts import (
    FSL_MC_PLATFORM,
    PCI_ROOT_PORT,
    McObject,
    PciFunction,
    SocDevice,
    default_mc_objects,
    default_pci_functions,
    default_soc_devices,
)

__all__ = [
    "FSL_MC_PLATFORM",
    "PCI_ROOT_PORT",
    "McObject",
    "PciFunction",
    "SampleBoard",
    "SocDevice",
    "build_sample_board",
    "default_mc_objects",
    "default_pci_functions",
    "default_soc_devices",
    "full_sample_board",
]

"""Recording: boot a kernel under QEMU with the plugin (machine.py), its
initramfs (initramfs.py) with the workloads (workloads.py), the user's own
programs (foreign.py) and an L2 guest (guest.py); the run's files
(output.py), and the children that die with fputrace (children.py).
recorder.py puts them together."""

"""The tests' own x86_64 kernels: Debian's `linux` source of a series built
by `fputrace kernel build` (fputrace/kernel/build.py) with its small
configuration, as a kernel developer builds their own. Two variants cover
what Debian's kernels do not:

- kvm-builtin-btf: KVM and KVM_AMD compiled into the image, with BTF. Its
  fragment is the bug zoo's x86 configuration (zoo/configs/), so this
  kernel is also the zoo's clean x86 kernel, built once for both;
- kvm-modules-dwarf: KVM as modules, with DWARF and no BTF, so the task
  layout can come only from the vmlinux given with --vmlinux.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fputrace.kernel import build
from fputrace.paths import PROJECT_ROOT

FRAGMENTS = {
    "kvm-builtin-btf": PROJECT_ROOT / "zoo" / "configs" / "kvm-builtin.config",
    "kvm-modules-dwarf": PROJECT_ROOT / "tests" / "configs" / "no-btf.config",
}


@dataclass(frozen=True)
class BuiltKernel:
    variant: str
    source_version: str
    bzimage: Path
    vmlinux: Path
    modules: Path  # INSTALL_MOD_PATH: lib/modules/RELEASE below it
    release: str


def build_test_kernel(series: str, variant: str) -> BuiltKernel:
    """Build (once) a variant of FRAGMENTS from the series' Debian source."""
    kernel, _ = build.build_kernel(build.BuildRequest(series, "amd64", (),
                                                      (FRAGMENTS[variant],)))
    return BuiltKernel(variant, kernel.source_version, kernel.image, kernel.vmlinux,
                       kernel.path / "modules", kernel.release)

"""Kernel-side helpers against inputs built by hand: BTF blobs, module files
with a .modinfo section, apt sources, kallsyms text, a bzImage header."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from tracebuilder import VM_EXIT, TraceBuilder

from fputrace.errors import FputraceError
from fputrace.kernel import debian, selftests
from fputrace.kernel.btf import Btf
from fputrace.kernel.layout import _bzimage_release, _current_task_address
from fputrace.kernel.modules import ModuleTree
from fputrace.record.foreign import programs_of
from fputrace.record.initramfs import Initramfs
from fputrace.trace.run import load_run
from fputrace.trace.symbols import Symbols


def btf_blob(types: list[bytes], strings: bytes) -> bytes:
    type_sec = b"".join(types)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(type_sec), len(type_sec),
                      len(strings))
    return hdr + type_sec + strings


def btf_type(name_off: int, kind: int, vlen: int, size: int, kind_flag: int = 0) -> bytes:
    return struct.pack("<III", name_off, (kind_flag << 31) | (kind << 24) | vlen, size)


def test_btf_member_offsets_through_anonymous_members() -> None:
    # Strings: 1 "int", 5 "task_struct", 17 "pid", 21 "comm", 26 "tgid", 31 "pcpu_hot",
    #          40 "current_task"
    strings = b"\0int\0task_struct\0pid\0comm\0tgid\0pcpu_hot\0current_task\0"
    types = [
        # [1] int (4 bytes)
        btf_type(1, 1, 0, 4) + struct.pack("<I", 32),
        # [2] anonymous union { int tgid @ bit 0 } of 4 bytes
        btf_type(0, 5, 1, 4) + struct.pack("<III", 26, 1, 0),
        # [3] struct task_struct { int pid @ byte 8; union @ byte 12; int comm @ byte 40 }
        btf_type(5, 4, 3, 64) + struct.pack("<III", 17, 1, 64) + struct.pack("<III", 0, 2, 96)
        + struct.pack("<III", 21, 1, 320),
        # [4] struct pcpu_hot { anonymous union [2]... reuse: current_task via bitfield flag }
        btf_type(31, 4, 1, 64, kind_flag=1) + struct.pack("<III", 40, 1, (0 << 24) | 128),
    ]
    btf = Btf(btf_blob(types, strings))
    assert btf.member_offset("task_struct", "pid") == 8
    assert btf.member_offset("task_struct", "tgid") == 12  # 12 + 0 inside the union
    assert btf.member_offset("task_struct", "comm") == 40
    assert btf.member_offset("pcpu_hot", "current_task") == 16  # kind_flag offset: bit 128
    assert btf.member_offset("task_struct", "nope") is None
    assert btf.member_offset("nope", "pid") is None


def test_btf_rejects_garbage() -> None:
    with pytest.raises(FputraceError, match="not a BTF blob"):
        Btf(b"\0" * 64)


def test_current_task_address_by_symbol_presence() -> None:
    # Up to 6.1 (and from 6.15): a current_task per-cpu symbol.
    old = Symbols.parse("000000000001fb80 A current_task\nffffffff81000000 T _stext\n")
    assert _current_task_address(old, None, {}) == (0x1FB80, "current_task")
    # 6.2-6.14: pcpu_hot.current_task, the member offset from debug info.
    hot = Symbols.parse("0000000000032b00 D pcpu_hot\n")
    assert _current_task_address(hot, None, {"pcpu_hot": {"current_task": 0}}) == (
        0x32B00, "pcpu_hot.current_task")
    with pytest.raises(FputraceError, match="current_task nor a pcpu_hot"):
        _current_task_address(Symbols.parse("ffffffff81000000 T _stext\n"), None, {})


def test_symbols_describe_kernel_and_module_code() -> None:
    syms = Symbols.parse(
        "ffffffff81000000 T _stext\n"
        "ffffffff81034a00 t save_fpregs_to_fpstate\n"
        "ffffffff81034b00 T restore_fpregs_from_fpstate\n"
        "000000000001fb80 A current_task\n",
        "ffffffffc0a01000 t __svm_vcpu_run\t[kvm_amd]\n",
    )
    assert syms.describe(0xFFFFFFFF81034A43) == "save_fpregs_to_fpstate+0x43"
    assert syms.describe(0xFFFFFFFFC0A0105E) == "__svm_vcpu_run+0x5e [kvm_amd]"
    assert syms.function(0xFFFFFFFFC0A0105E) == "__svm_vcpu_run [kvm_amd]"
    assert syms.describe(0x1000) == "0x1000"  # below every text symbol
    assert syms.values["current_task"] == 0x1FB80
    idx = syms.locate(np.array([0xFFFFFFFF81034B01, 0x10], dtype=np.uint64))
    assert [syms.names[int(idx[0])], int(idx[1])] == ["restore_fpregs_from_fpstate", -1]


def fake_module(directory: Path, name: str, depends: str) -> None:
    # A relocatable ELF with only a .modinfo section, as the kernel's modpost writes it.
    src = directory / f"{name}.c"
    src.write_text(f'__attribute__((section(".modinfo"), used)) static const char info[] = '
                   f'"name={name}\\0depends={depends}";\n')
    subprocess.run(["gcc", "-c", "-o", str(directory / f"{name.replace('_', '-')}.ko"),
                    str(src)], check=True)


def test_module_load_order_from_modinfo(tmp_path: Path) -> None:
    require(shutil.which("gcc") is not None, "gcc not installed")
    # kvm_amd -> kvm, ccp; kvm -> irqbypass; ccp -> (none). Expected order: each
    # module after everything it depends on, in the order first reached.
    for name, deps in [("kvm_amd", "kvm,ccp"), ("kvm", "irqbypass"), ("irqbypass", ""),
                       ("ccp", ""), ("unrelated", "kvm")]:
        fake_module(tmp_path, name, deps)
    tree = ModuleTree(tmp_path)
    order = [p.name for p in tree.load_order(["kvm-amd"])]
    assert order == ["irqbypass.ko", "kvm.ko", "ccp.ko", "kvm-amd.ko"]
    with pytest.raises(FputraceError, match="module nope is not in"):
        tree.load_order(["nope"])


def test_built_in_modules_are_not_loaded(tmp_path: Path) -> None:
    require(shutil.which("gcc") is not None, "gcc not installed")
    # KVM=y, KVM_AMD=m: kvm-amd.ko's depends= names no built-in (modpost
    # leaves them out), but a user may still ask for kvm; ccp is a module.
    # modules.builtin as modules_install writes it, with a '-' in a name.
    release = tmp_path / "lib" / "modules" / "6.1.0-test"
    release.mkdir(parents=True)
    (release / "modules.builtin").write_text("kernel/arch/x86/kvm/kvm.ko\n"
                                             "kernel/virt/lib/irqbypass.ko\n"
                                             "kernel/drivers/char/hw_random/rng-core.ko\n")
    fake_module(release, "kvm_amd", "ccp")
    fake_module(release, "ccp", "")
    tree = ModuleTree(tmp_path)
    assert tree.builtin == {"kvm", "irqbypass", "rng_core"}
    assert tree.is_builtin("rng-core") and not tree.is_builtin("kvm_amd")
    assert [p.name for p in tree.load_order(["kvm", "kvm_amd"])] == ["ccp.ko", "kvm-amd.ko"]


def test_module_dependency_cycle_is_an_error(tmp_path: Path) -> None:
    require(shutil.which("gcc") is not None, "gcc not installed")
    fake_module(tmp_path, "a", "b")
    fake_module(tmp_path, "b", "a")
    with pytest.raises(FputraceError, match="cycle: a -> b -> a"):
        ModuleTree(tmp_path).load_order(["a"])


def test_archive_uris_from_deb822_and_legacy(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    (d / "other.sources").write_text("Types: deb\nURIs: https://vendor.example/apt\n"
                                     "Suites: stable\nComponents: main\n")
    assert debian.archive_uris(tmp_path) == ("http://archive.example/debian",
                                             "http://security.example/debian-security")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "sources.list").write_text("# comment\ndeb [arch=amd64] http://old.example/d "
                                         "bookworm main\n")
    assert debian.archive_uris(legacy) == ("http://old.example/d", None)
    with pytest.raises(FputraceError, match="no Debian archive"):
        debian.archive_uris(tmp_path / "empty")


def test_bzimage_release_of_a_debian_kernel() -> None:
    info = debian.cached_kernel("6.1", "amd64")
    require(info is not None, "Debian 6.1 kernel not fetched (make test fetches it)")
    assert info is not None
    # Independent truth: the Debian package is named after the kernel release.
    assert _bzimage_release(info.vmlinuz) == info.package.removeprefix("linux-image-")


def test_initramfs_is_a_valid_newc_archive(tmp_path: Path) -> None:
    require(shutil.which("cpio") is not None, "cpio not installed")
    ramfs = Initramfs()
    ramfs.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    ramfs.file("modules/kvm.ko", b"\x7fELF" + bytes(1001))
    ramfs.symlink("bin/sh", "busybox")
    (tmp_path / "r.gz").write_bytes(ramfs.pack())
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(f"zcat {tmp_path / 'r.gz'} | cpio -idm --quiet", shell=True, cwd=out,
                   check=True)
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "init").stat().st_mode & 0o777 == 0o755
    assert (out / "modules" / "kvm.ko").stat().st_size == 1005
    assert (out / "bin" / "sh").readlink() == Path("busybox")


def test_kernel_mechanisms_by_symbol_presence() -> None:
    from analyzers.mechanisms import kernel_mechanisms

    v61 = {m.name: m.present for m in kernel_mechanisms(Symbols.parse(
        "ffffffff81034000 T fpu_swap_kvm_fpstate\nffffffff81035000 T switch_fpu_return\n"
        "ffffffff81036000 T fpu_update_guest_xfd\n"))}
    assert v61 == {"kvm_fpstate_swap": True, "lazy_user_restore": True, "xfd": True}
    v510 = {m.name: m.present for m in kernel_mechanisms(Symbols.parse(
        "ffffffffc0a00000 t kvm_save_current_fpu\t[kvm]\n"))}
    assert v510 == {"kvm_fpstate_swap": False, "lazy_user_restore": False, "xfd": False}
    # A kernel without KVM says nothing about KVM's design.
    assert "kvm_fpstate_swap" not in {m.name for m in kernel_mechanisms(Symbols.parse(""))}


def test_struct_offsets_from_dwarf(tmp_path: Path) -> None:
    # A stand-in for a vmlinux with debug info: the offsets are fixed by the
    # padding written here (pid at 8, tgid at 12, comm at 40; current_task at
    # 16 inside an anonymous union, as in struct pcpu_hot).
    require(shutil.which("gcc") is not None, "gcc not installed")
    from fputrace.kernel.dwarf import struct_offsets

    src = tmp_path / "k.c"
    src.write_text(
        "struct task_struct { long state; int pid; int tgid; char pad[24]; char comm[16]; };\n"
        "struct pcpu_hot { long a, b; union { struct { struct task_struct *current_task; };"
        " char pad[64]; }; };\n"
        "struct task_struct t; struct pcpu_hot h;\n")
    obj = tmp_path / "k.o"
    subprocess.run(["gcc", "-g", "-c", "-o", str(obj), str(src)], check=True)
    offsets = struct_offsets(obj, {"task_struct": ["pid", "tgid", "comm"],
                                   "pcpu_hot": ["current_task"]})
    assert offsets == {"task_struct": {"pid": 8, "tgid": 12, "comm": 40},
                       "pcpu_hot": {"current_task": 16}}
    plain = tmp_path / "nodebug.o"
    subprocess.run(["gcc", "-c", "-o", str(plain), str(src)], check=True)
    with pytest.raises(FputraceError, match="no DWARF debug info"):
        struct_offsets(plain, {"task_struct": ["pid"]})


def test_kvm_mode_the_arm64_kernel_ran_is_checked() -> None:
    # Console lines as arm64 kernels print them (kvm_arm_init()): the mode
    # asked for is confirmed, another one names the option that works, and
    # no KVM at all says so.
    from fputrace.record.recorder import _kvm_mode_problem

    vhe = "[    1.2] kvm [1]: VHE mode initialized successfully\n"
    nvhe = "[    1.2] kvm [1]: Hyp mode initialized successfully\n"
    assert _kvm_mode_problem(vhe, "vhe") is None
    assert _kvm_mode_problem(nvhe, "nvhe") is None
    problem = _kvm_mode_problem(vhe, "nvhe")
    assert problem is not None and problem.endswith("use --kvm-mode vhe")
    assert "\n" not in problem
    problem = _kvm_mode_problem("[    1.2] kvm [1]: HYP mode not available\n", "vhe")
    assert problem is not None and "did not initialize KVM" in problem


def test_a_kernel_the_archive_does_not_serve_falls_back_to_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The indices name 6.1.99-1 first, but its .deb is a 404; 6.1.90-1 is
    # served. The fetch takes 6.1.90-1, says so once, and does not ask for
    # 6.1.99-1 again until --refresh.
    monkeypatch.setenv("FPUTRACE_CACHE", str(tmp_path))
    tried: list[str] = []

    def unpack(apt: debian.PrivateApt, package: str, version: str, release: str,
               root: Path) -> None:
        tried.append(version)
        if version == "6.1.99-1":
            raise debian.NotServed("404")
        root.mkdir(parents=True)
        (root / "vmlinuz").write_bytes(b"MZ")

    monkeypatch.setattr(debian.PrivateApt, "update", lambda self, force=False: None)
    monkeypatch.setattr(debian.PrivateApt, "versions",
                        lambda self, package: ["6.1.99-1", "6.1.90-1"])
    monkeypatch.setattr(debian.PrivateApt, "exact_depends",
                        lambda self, p, v, prefix: (f"linux-image-6.1.0-{v[4:6]}-arm64", v))
    monkeypatch.setattr(debian, "_unpack", unpack)
    info = debian.fetch_kernel("6.1", "arm64")
    assert (info.package, info.version) == ("linux-image-6.1.0-90-arm64", "6.1.90-1")
    assert tried == ["6.1.99-1", "6.1.90-1"]
    err = capsys.readouterr().err
    assert "does not serve linux-image-6.1.0-99-arm64 6.1.99-1" in err
    assert "using linux-image-6.1.0-90-arm64 6.1.90-1" in err
    assert debian.fetch_kernel("6.1", "arm64") == info
    assert tried == ["6.1.99-1", "6.1.90-1"] and capsys.readouterr().err == ""
    debian.fetch_kernel("6.1", "arm64", refresh=True)
    assert tried[2:] == ["6.1.99-1"]


def test_debian_versions_newest_first() -> None:
    assert debian.version_sorted(["6.1.8-1", "6.1.10-1", "6.1.10-1~bpo12+1", "6.1.10-2"]) == \
        ["6.1.10-2", "6.1.10-1", "6.1.10-1~bpo12+1", "6.1.8-1"]


PATCH = """\
From: someone
Subject: a change to the kernel and one to a selftest

--- a/drivers/x/y.c
+++ b/drivers/x/y.c
@@ -1,3 +1,3 @@
 int a;
--- this removed line looks like a file header
+++ and this added one too
 int b;
--- a/tools/testing/selftests/arm64/fp/t.c
+++ b/tools/testing/selftests/arm64/fp/t.c
@@ -1,2 +1,2 @@
-int x = 1;
+int x = 2;
 int y;
"""


def test_only_the_parts_of_a_patch_under_the_prefixes_are_applied(tmp_path: Path) -> None:
    part = selftests.patch_parts(PATCH, ("tools/testing/selftests/",))
    # The first file's hunk is skipped by its counted length, so its body
    # lines are not taken for the header of another file.
    assert part.startswith("--- a/tools/testing/selftests/arm64/fp/t.c\n")
    assert "drivers" not in part and "looks like" not in part
    tree = tmp_path / "src"
    (tree / "tools/testing/selftests/arm64/fp").mkdir(parents=True)
    (tree / "tools/testing/selftests/arm64/fp/t.c").write_text("int x = 1;\nint y;\n")
    subprocess.run(["patch", "-p1", "--silent"], cwd=tree, input=part, text=True, check=True)
    assert (tree / "tools/testing/selftests/arm64/fp/t.c").read_text() == "int x = 2;\nint y;\n"
    assert selftests.patch_parts(PATCH, ("include/uapi/",)) == ""


@pytest.mark.parametrize(("line", "programs"), [
    ("cd fp && ./fp-stress -t 5", ["cd", "./fp-stress"]),
    ("A=1 ./x; timeout 3 ./y | tail -2", ["./x", "timeout", "tail"]),
    ("./x 2>&1 >/tmp/out", ["./x"]),
    ("echo 'a && b'", ["echo"]),
    ("(cd a; ./b) && ./c", ["cd", "./b", "./c"]),
    ("for t in a b; do ./$t; echo \"$t: $?\"; done; ./z", ["./$t", "echo", "./z"]),
    ("if ./x; then ./y; else ./w; fi && while ./v; do sleep 1; done",
     ["./x", "./y", "./w", "./v", "sleep"]),
    ("case $1 in a) ./a;; esac; ./b", ["./b"]),
])
def test_the_programs_a_run_line_starts(line: str, programs: list[str]) -> None:
    assert programs_of(line) == programs


NVHE_KALLSYMS = """\
ffff800008000000 T _stext
ffff800009100000 T __kvm_nvhe___kvm_hyp_vector
ffff800009100800 T __kvm_nvhe___fpsimd_restore_state
ffff800009100900 T __kvm_nvhe_kvm_update_va_mask
ffff800009100900 T kvm_update_va_mask
ffff800009100a00 T kvm_other
"""
HYP_VECTOR = 0x95AB_C0EF_8800  # where the hypervisor maps __kvm_hyp_vector


@pytest.mark.parametrize("exit_pc", [HYP_VECTOR + 0x400, 0xFFFF800009100400])
def test_nvhe_hypervisor_code_is_named_through_its_vector(tmp_path: Path, exit_pc: int) -> None:
    # An nVHE VM exit is taken at __kvm_hyp_vector+0x400 at the hypervisor's
    # address; from it, hypervisor pcs get the names of their __kvm_nvhe_
    # symbols. A VHE exit (a kernel address) gives no such offset.
    b = TraceBuilder()
    b.event(VM_EXIT, pc=exit_pc, flags=2)
    path = b.write(tmp_path / "t.ftr")
    (tmp_path / "t.kallsyms.gz").write_bytes(gzip.compress(NVHE_KALLSYMS.encode()))
    symbols = load_run(path).symbols
    hyp = exit_pc >> 48 == 0
    restore = HYP_VECTOR + 0x808
    assert symbols.describe(restore) == ("__fpsimd_restore_state+0x8 [nvhe]" if hyp
                                         else f"{restore:#x}")
    # kvm_update_va_mask shares its address with the kernel's symbol of that
    # name: its alias still ends where the next kernel symbol begins.
    assert symbols.describe(HYP_VECTOR + 0x9F0) == ("kvm_update_va_mask+0xf0 [nvhe]" if hyp
                                                    else f"{HYP_VECTOR + 0x9F0:#x}")
    assert symbols.describe(HYP_VECTOR + 0xA10) == f"{HYP_VECTOR + 0xA10:#x}"
    assert symbols.describe(0xFFFF800009100808) == "__kvm_nvhe___fpsimd_restore_state+0x8"


def test_a_cached_source_of_the_series_is_used_without_the_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel's own version was not served, 6.1.187-1 was taken in its
    # place before: it is used again, and apt is not asked (offline works).
    monkeypatch.setenv("FPUTRACE_CACHE", str(tmp_path))
    for version in ("6.1.187-1", "6.1.170-3", "6.12.57-1"):
        d = tmp_path / "sources" / f"linux_{version}"
        d.mkdir(parents=True)
        (d / f"linux_{version}.dsc").write_text("")

    def offline(self: debian.PrivateApt, force: bool = False) -> None:
        raise AssertionError("apt asked although the source is cached")

    monkeypatch.setattr(debian.PrivateApt, "update", offline)
    version, dsc = selftests.fetch_source("6.1.192-2", "bookworm")
    assert version == "6.1.187-1" and dsc.name == "linux_6.1.187-1.dsc"
    version, _ = selftests.fetch_source("6.1.170-3", "bookworm")
    assert version == "6.1.170-3"


# Synthetic names and versions: the parsers' inputs, in apt-cache's and the
# .dsc's formats, not anything the archive serves.
APT_SHOW = """\
Package: linux-image-meta
Version: 1.2-3
Depends: linux-image-abi-unsigned (= 1.2-3)
 | linux-image-abi (= 1.2-3), initramfs-tools (>= 0.120)
Description: a meta package

"""


def test_exact_depends_reads_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    # As apt-cache show prints a meta package: the exact dependency with the
    # prefix, even as the second of two alternatives; none without one.
    monkeypatch.setattr(debian.PrivateApt, "_run", lambda self, tool, args, cwd=None: APT_SHOW)
    apt = debian.PrivateApt.__new__(debian.PrivateApt)
    apt.codename = "bookworm"
    assert apt.exact_depends("linux-image-meta", "1.2-3", "linux-image-abi") == \
        ("linux-image-abi-unsigned", "1.2-3")
    with pytest.raises(FputraceError, match="depends on no initramfs"):
        apt.exact_depends("linux-image-meta", "1.2-3", "initramfs")


def test_dsc_names_its_two_tarballs(tmp_path: Path) -> None:
    dsc = tmp_path / "linux_1.2-3.dsc"
    dsc.write_text(
        "Format: 3.0 (quilt)\nSource: linux\nVersion: 1.2-3\n"
        "Checksums-Sha256:\n"
        " " + "a" * 64 + " 140 linux_1.2.orig.tar.xz\n"
        "Files:\n"
        " " + "0" * 32 + " 140 linux_1.2.orig.tar.xz\n"
        " " + "1" * 32 + " 1580 linux_1.2-3.debian.tar.xz\n")
    assert selftests.dsc_files(dsc) == (tmp_path / "linux_1.2.orig.tar.xz",
                                         tmp_path / "linux_1.2-3.debian.tar.xz")


def test_bare_names_resolve_as_in_the_guest(tmp_path: Path) -> None:
    # /added and the directories directly under it are on the guest's PATH;
    # a program deeper down needs its path.
    from fputrace.record.foreign import AddedFile, check_commands, guest_path

    added = [AddedFile(tmp_path / "a", "added/top"), AddedFile(tmp_path / "b", "added/d/prog"),
             AddedFile(tmp_path / "c", "added/d/sub/deep")]
    for f in added:
        f.src.write_bytes(b"\x7fELF")
        f.src.chmod(0o755)
    assert guest_path(added).split(":")[:2] == ["/added", "/added/d"]
    applets = frozenset({"bin/sh"})
    assert [r.command for r in check_commands(["top", "prog 1", "d/sub/deep"], added,
                                              applets)] == ["top", "prog 1", "d/sub/deep"]
    with pytest.raises(FputraceError, match="deep is neither an added file"):
        check_commands(["deep"], added, applets)
    # After a cd the shell finds ./deep; a name no added file has is still
    # refused.
    assert check_commands(["cd d/sub && ./deep"], added, applets)[0].command == \
        "cd d/sub && ./deep"
    with pytest.raises(FputraceError, match=r"\./nope is neither"):
        check_commands(["cd d/sub && ./nope"], added, applets)


MODULES_TEXT = """\
ffffffff81000000 T _stext
ffffffff81001000 T kernel_fpu_begin_mask
ffffffff81ff0000 T _etext
ffffffffc0a00000 t svm_vcpu_run\t[kvm_amd]
ffffffffc0a01000 t __svm_sev_es_vcpu_run\t[kvm_amd]
@module kvm_amd 155648 0 - Live 0xffffffffc0a00000
@module mymod 16384 0 - Live 0xffffffffc0c00000
@module nosyms 8192 0 - Live 0xffffffffc0d00000
ffffffffc0c00000 t mymod_clobber\t[mymod]
ffffffffc0c00100 t mymod_exit\t[mymod]
"""


def test_a_symbol_never_stretches_past_its_module() -> None:
    # kvm_amd's last function must not name code beyond kvm_amd's memory
    # (the 0x14c89 blame of the issue), nor code of a module whose symbols
    # are unknown; a module's own function is named.
    syms = Symbols.parse(MODULES_TEXT)
    assert syms.describe(0xFFFFFFFFC0A00010) == "svm_vcpu_run+0x10 [kvm_amd]"
    assert syms.describe(0xFFFFFFFFC0C00010) == "mymod_clobber+0x10 [mymod]"
    past_kvm = 0xFFFFFFFFC0A01000 + 0x14C89 + 155648
    assert syms.describe(past_kvm) == f"{past_kvm:#x}"
    assert syms.describe(0xFFFFFFFFC0D00040) == "0xffffffffc0d00040 (in module nosyms, no symbol)"
    assert syms.describe(0xFFFFFFFF81001010) == "kernel_fpu_begin_mask+0x10"
    # Dumped twice (after each command), the same rows are kept once.
    assert len(Symbols.parse(MODULES_TEXT + MODULES_TEXT)) == len(syms)


def test_module_code_is_read_from_the_functions_own_section(tmp_path: Path) -> None:
    # A relocatable object like a .ko: two functions in two sections, each
    # symbol's value an offset in its own section. The bytes are the ones the
    # assembler was given.
    from fputrace.kernel.text import module_code

    src = tmp_path / "m.s"
    src.write_text(
        ".section .text.a,\"ax\"\n.globl first\n.type first,@function\n"
        "first: nop\n nop\n ret\n.size first,.-first\n"
        ".section .text.b,\"ax\"\n.byte 0xcc, 0xcc\n.globl second\n.type second,@function\n"
        "second: .byte 0x90, 0x66, 0x0f, 0x76, 0xc9, 0xc3\n.size second,.-second\n")
    obj = tmp_path / "m.o"
    require(shutil.which("as") is not None, "no assembler")
    subprocess.run(["as", "-o", str(obj), str(src)], check=True)
    ko = obj.read_bytes()
    assert module_code(ko, "second", 1, 16) == bytes([0x66, 0x0F, 0x76, 0xC9, 0xC3])
    assert module_code(ko, "first", 0, 2) == bytes([0x90, 0x90])
    assert module_code(ko, "third", 0, 4) == b""
    assert module_code(b"not an ELF", "first", 0, 4) == b""

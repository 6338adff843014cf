"""The kernel's own FP selftests, built from the Debian source of a kernel.

`fputrace kernel selftests 6.1 --arch arm64` builds
tools/testing/selftests/arm64/fp (fpsimd-test, sve-test, ssve-test, za-test,
fp-stress, ...) from the Debian `linux` source package of the version of the
cached kernel, statically linked with the cross compiler, so that `record
--add DIR --run 'cd fp && ./fp-stress -t 5'` runs them in the guest.

`--arch amd64` builds, with the machine's gcc, the x86 selftests that move
FP state (tools/testing/selftests/x86: corrupt_xstate_header, sigreturn,
xstate and avx where the version has them, amx, and the 32-bit x87 tests
test_FCMOV, test_FCOMI, test_FISTTP) and the KVM selftests that do
(tools/testing/selftests/kvm: state_test, cr4_cpuid_sync_test,
xcr0_cpuid_test, amx_test and the nested SVM tests), each where the
version's Makefile has it; on arm64 also KVM's get-reg-list (and host_sve
where the version has it). A selftest that needs what QEMU's TCG lacks (AMX,
XFD, XSAVES, AVX-512, VMX) says so itself when it runs (KSFT_SKIP, "SKIP").

The source comes through a private apt configuration (deb-src lines built
from the machine's own archive URIs) and is cached under
~/.cache/fputrace/sources. Of Debian's patch series, the parts that touch
what the build reads (the selftests, the UAPI headers, tools/include) are
applied; the rest changes the kernel, not its tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from debian import deb822
from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from fputrace.errors import FputraceError
from fputrace.kernel import debian
from fputrace.paths import cache_dir, cache_lock

SOURCE_PACKAGE = "linux"


@dataclass(frozen=True)
class SuiteDir:
    """One selftest directory and what is built of it."""

    path: str  # under the source tree
    # Programs wanted (paths below the output directory), each built where
    # the directory's Makefile names it (its name less a _32/_64 suffix);
    # empty: the Makefile's `all`.
    wanted: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # programs every version has: the build fails without them


@dataclass(frozen=True)
class Suite:
    """Selftest directories built for one architecture."""

    karch: str  # the kernel's ARCH= name
    cross_prefix: str  # CROSS_COMPILE ("" for the machine's own compiler)
    dirs: tuple[SuiteDir, ...]
    # The tree's own UAPI headers before the compiler's: before v5.18
    # (KHDR_INCLUDES) the x86 Makefile gives none, and its -m32 programs
    # would look for the machine's i386 <asm/unistd.h>.
    uapi_first: bool = False


SUITES = {
    "arm64": Suite("arm64", "aarch64-linux-gnu-", (
        SuiteDir("tools/testing/selftests/arm64/fp", (), ("fpsimd-test", "sve-test")),
        # KVM_GET_REG_LIST with and without SVE: the FP/SIMD and SVE registers
        # a vCPU exposes (host_sve is newer than 6.12).
        # (6.12 builds it at the top of the directory, from get-reg-list.c
        # and aarch64/get-reg-list.c.)
        SuiteDir("tools/testing/selftests/kvm", ("aarch64/get-reg-list", "get-reg-list",
                                                 "arm64/host_sve")),
    )),
    "amd64": Suite("x86", "", (
        SuiteDir("tools/testing/selftests/x86", (
            "corrupt_xstate_header_64", "sigreturn_64", "sigreturn_32", "xstate_64",
            "avx_64", "amx_64", "test_FCMOV_32", "test_FCOMI_32", "test_FISTTP_32")),
        SuiteDir("tools/testing/selftests/kvm", (
            "x86_64/state_test", "x86_64/cr4_cpuid_sync_test", "x86_64/xcr0_cpuid_test",
            "x86_64/amx_test", "x86_64/svm_vmcall_test", "x86_64/svm_int_ctl_test",
            "x86_64/svm_nested_shutdown_test", "x86_64/svm_nested_soft_inject_test"),
            ("x86_64/state_test",)),
    ), uapi_first=True),
}


def wanted_in(makefile: str, wanted: tuple[str, ...]) -> list[str]:
    """The wanted programs a selftest Makefile names ("sigreturn" for
    sigreturn_64; "x86_64/state_test" as written)."""
    out = []
    for w in wanted:
        base = re.sub(r"_(32|64)$", "", w) if "/" not in w else w
        if re.search(rf"(?<![\w/]){re.escape(base)}(?!\w)", makefile):
            out.append(w)
    return out


# Given to a second build of the programs that failed the first.
COMPAT_DEFINES = "'-DARRAY_SIZE(a)=(sizeof(a)/sizeof((a)[0]))'"

# Top-level directories the build never reads: left out of the unpacked tree.
UNREAD = ("Documentation", "drivers", "fs", "net", "sound", "samples", "LICENSES")


@dataclass(frozen=True)
class SelftestBuild:
    """What `kernel selftests` built, written to build.json next to it."""

    kernel: str  # the kernel package the tests are for
    kernel_version: str  # its Debian version
    source_version: str  # the linux source version they were built from
    patches: list[str]  # Debian patches (or parts of them) applied
    dirs: dict[str, str]  # selftest directory in the source -> built directory
    programs: dict[str, list[str]]  # built directory -> its programs
    # built directory -> programs of that version that do not build
    failed: dict[str, list[str]] = field(default_factory=dict)
    suite: str = ""  # digest of the Suite it was built for: a changed one is built again

    @property
    def exact(self) -> bool:
        return self.kernel_version == self.source_version


def _suite(arch: str) -> Suite:
    suite = SUITES.get(arch)
    if suite is None:
        raise FputraceError(f"no FP selftests are built for {arch}: give --arch "
                            f"{' or '.join(SUITES)}")
    compiler = f"{suite.cross_prefix}gcc"
    if shutil.which(compiler) is None:
        raise FputraceError(f"{compiler} not found: install "
                            f"{'gcc-aarch64-linux-gnu' if suite.cross_prefix else 'gcc'} "
                            "(make setup)")
    return suite


def _series_of(version: str) -> str:
    """"6.1" for "6.1.192-2", "6.12" for "6.12.57-1"."""
    return ".".join(version.split(".")[:2])


def fetch_source(kernel_version: str, codename: str) -> tuple[str, Path]:
    """(version, .dsc path) of the linux source for a kernel version, downloaded
    once. The kernel's own version comes first; where the archive does not
    serve it, the newest served version of the same series is taken."""
    with cache_lock("sources"):
        return _fetch_source(kernel_version, codename)


def _fetch_source(kernel_version: str, codename: str) -> tuple[str, Path]:
    root = cache_dir() / "sources"
    series = _series_of(kernel_version)
    # Downloaded before (the kernel's own, or the one taken in its place)?
    cached = {d.name.split("_", 1)[1]: d for d in root.glob(f"{SOURCE_PACKAGE}_{series}.*")
              if any(d.glob("*.dsc"))}
    if cached:
        version = kernel_version if kernel_version in cached else \
            debian.version_sorted(list(cached))[0]
        return version, sorted(cached[version].glob("*.dsc"))[0]
    apt = debian.PrivateApt(codename, "source", sources=True)
    apt.update()
    versions = [v for v in apt.versions(SOURCE_PACKAGE) if _series_of(v) == series]
    order = [kernel_version] + [v for v in versions if v != kernel_version]
    not_served = []
    for version in order:
        dest = root / f"{SOURCE_PACKAGE}_{version}"
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp_s:
            tmp = Path(tmp_s)
            tmp.chmod(0o755)
            try:
                apt.download_source(SOURCE_PACKAGE, version, tmp / "dl")
            except debian.NotServed:
                not_served.append(version)
                continue
            (tmp / "dl").rename(dest)
        dsc = sorted(dest.glob("*.dsc"))[0]
        if not_served:
            debian.note(f"the archive does not serve linux source {', '.join(not_served)} "
                        f"(HTTP 404): building from linux {version}")
        return version, dsc
    raise FputraceError(f"the archive serves no linux {series} source ({', '.join(order)}: "
                        "HTTP 404): try again later")


def dsc_files(dsc: Path) -> tuple[Path, Path]:
    """The upstream tarball and Debian's tarball named by a .dsc."""
    names = [f["name"] for f in deb822.Dsc(dsc.read_text()).get("Files", [])]
    orig = [n for n in names if ".orig.tar." in n]
    deb = [n for n in names if ".debian.tar." in n]
    if len(orig) != 1 or len(deb) != 1:
        raise FputraceError(f"{dsc.name}: expected one .orig and one .debian tarball")
    return dsc.parent / orig[0], dsc.parent / deb[0]


def patch_parts(patch: str, prefixes: tuple[str, ...]) -> str:
    """The per-file parts of a unified diff whose target lies under one of the
    prefixes (paths taken after the diff's first component, as patch -p1
    does). unidiff counts hunk lengths, so a removed line that starts with
    '-- ' is not taken for a new file header."""
    try:
        files = PatchSet(patch)
    except UnidiffParseError as e:
        raise FputraceError(f"a Debian patch is not a unified diff ({e}): run with "
                            "--refresh to fetch the source again") from None
    kept = []
    for f in files:
        target = f.target_file if f.target_file != "/dev/null" else f.source_file
        path = target.split("/", 1)[1] if "/" in target else target
        if path.startswith(prefixes):
            # The file's headers and hunks, without what came before them
            # (the patch's description, git's extended headers).
            kept.append(f"--- {f.source_file}\n+++ {f.target_file}\n" +
                        "".join(str(h) for h in f))
    return "".join(kept)


def _apply_debian_patches(tree: Path, debian_dir: Path, prefixes: tuple[str, ...]) -> list[str]:
    series = debian_dir / "patches" / "series"
    applied: list[str] = []
    if not series.exists():
        return applied
    for name in series.read_text().splitlines():
        name = name.split("#", 1)[0].strip()
        if not name:
            continue
        part = patch_parts((debian_dir / "patches" / name.split()[0]).read_text(
            errors="surrogateescape"), prefixes)
        if not part:
            continue
        proc = subprocess.run(["patch", "-p1", "--forward", "--silent"], cwd=tree,
                              input=part, text=True, errors="surrogateescape",
                              capture_output=True)
        if proc.returncode != 0:
            raise FputraceError(f"Debian patch {name} does not apply to its own source: "
                                f"{(proc.stdout + proc.stderr).strip().splitlines()[0]}")
        applied.append(name)
    return applied


MAKE_ERROR = re.compile(r"^make(?:\[\d+\])?: \*\*\* \[[^\]]*?:\d+: (\S+)\] Error", re.M)


def _run_make(args: list[str], cwd: Path, log: Path) -> list[str]:
    """Run make, keeping going past a target that fails; return the failed
    targets' names."""
    start = log.stat().st_size if log.exists() else 0
    jobs = str(os.cpu_count() or 1)
    with open(log, "a") as f:
        subprocess.run(["make", "-k", f"-j{jobs}", *args], cwd=cwd, stdout=f,
                       stderr=subprocess.STDOUT)
    with open(log, errors="replace") as f:
        f.seek(start)
        return sorted({Path(m).name for m in MAKE_ERROR.findall(f.read())})


def _collect_programs(build_dir: Path, out: Path) -> list[str]:
    """The programs the build linked, in out (paths below it: the KVM tests
    link into $(OUTPUT)/x86_64). Before v5.11 the arm64 fp Makefile links its
    programs in the source directory instead of $(OUTPUT): they are moved
    over. Objects, libraries and the scripts that were there already are not
    programs."""
    for p in build_dir.iterdir():
        if p.is_file() and p.suffix != ".o" and os.access(p, os.X_OK) and \
                p.read_bytes()[:4] == b"\x7fELF" and not (out / p.name).exists():
            shutil.move(str(p), out / p.name)
    for obj in [*out.rglob("*.o"), *out.rglob("*.a"), *out.rglob("*.d")]:
        obj.unlink()
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and os.access(p, os.X_OK))


def build_selftests(series: str, arch: str, refresh: bool = False) -> tuple[Path, SelftestBuild]:
    """Build (once) the FP selftests for the Debian kernel of a series; return
    the directory holding one subdirectory per selftest directory, and what
    was built."""
    with cache_lock(f"selftests-{series}-{arch}"):
        return _build_selftests(series, arch, refresh)


def _build_selftests(series: str, arch: str, refresh: bool) -> tuple[Path, SelftestBuild]:
    suite = _suite(arch)
    info = debian.cached_kernel(series, arch) or debian.fetch_kernel(series, arch)
    kernel_version = debian.kernel_version(info)
    root = cache_dir() / "selftests" / f"{series}-{arch}" / info.release
    record = root / "build.json"
    digest = hashlib.sha256(repr(suite).encode()).hexdigest()[:12]
    if record.exists() and not refresh:
        built = SelftestBuild(**json.loads(record.read_text()))
        if built.suite == digest:
            return root, built
    codename = debian.RELEASES[series]
    source_version, dsc = fetch_source(kernel_version, codename)
    orig, debian_tar = dsc_files(dsc)
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"{info.release}.build.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp_s:
        tmp = Path(tmp_s)
        src = tmp / "src"
        src.mkdir()
        # The tarball has one top directory, linux-VERSION: strip it, and leave
        # out what is under it and never read (anchored: tools/.../drivers stays).
        subprocess.run(["tar", "-xf", str(orig), "-C", str(src), "--strip-components=1",
                        "--anchored", "--no-wildcards-match-slash",
                        *[f"--exclude=*/{d}" for d in UNREAD]], check=True)
        subprocess.run(["tar", "-xf", str(debian_tar), "-C", str(src)], check=True)
        prefixes = ("tools/testing/selftests/", "tools/include/", "tools/arch/",
                    "tools/lib/", "include/uapi/", f"arch/{suite.karch}/include/uapi/")
        patches = _apply_debian_patches(src, src / "debian", prefixes)
        cross = [f"ARCH={suite.karch}", f"CROSS_COMPILE={suite.cross_prefix}"]
        # The UAPI headers the selftests include (KHDR_INCLUDES: usr/include).
        if _run_make([*cross, "headers"], src, log):
            raise FputraceError(f"installing the UAPI headers of linux {source_version} "
                                f"failed (log: {log})")
        staging = tmp / "out"
        dirs: dict[str, str] = {}
        programs: dict[str, list[str]] = {}
        failed: dict[str, list[str]] = {}
        for sd in suite.dirs:
            d = sd.path
            name = Path(d).name
            out = staging / name
            out.mkdir(parents=True)
            # -static in CC, not LDFLAGS: the -nostdlib tests link with $(CC) alone,
            # and the guest has no dynamic loader. 'all' by name: the Makefile's
            # first rule is one program's.
            # Some versions carry a test that does not build: 6.12's kernel-test
            # takes ARRAY_SIZE() from <linux/kernel.h>, which the UAPI header does
            # not define; it is built again with the definition given. What still
            # fails is named: 5.10's sve-ptrace into $(OUTPUT) (an unresolved
            # symbol); 5.10's x86 sigreturn, whose altstack_data[SIGSTKSZ] is no
            # constant since glibc 2.34.
            cc = f"CC={suite.cross_prefix}gcc -static" + (
                f" -isystem {src / 'usr/include'}" if suite.uapi_first else "")
            targets = [str(out / t) for t in wanted_in((src / d / "Makefile").read_text(),
                                                       sd.wanted)] if sd.wanted else ["all"]
            if not targets:
                continue  # the version has none of them
            broken = _run_make([*cross, cc, f"OUTPUT={out}", "-C", d, *targets], src, log)
            if broken:
                # What a failed link left behind would pass for built.
                for t in broken:
                    for stale in out.rglob(t):
                        stale.unlink()
                broken = _run_make([*cross, f"{cc} {COMPAT_DEFINES}", f"OUTPUT={out}",
                                    "-C", d, *[str(out / t) for t in broken]], src, log)
            dirs[d] = name
            programs[name] = _collect_programs(src / d, out)
            failed[name] = [t for t in broken if Path(t).name not in
                            {Path(p).name for p in programs[name]}]
            missing = [t for t in sd.required if t not in programs[name]]
            if missing:
                raise FputraceError(f"{d} of linux {source_version}: {', '.join(missing)} did "
                                    f"not build (log: {log})")
        build = SelftestBuild(info.package, kernel_version, source_version, patches, dirs,
                              programs, failed, digest)
        (staging / "build.json").write_text(json.dumps(asdict(build), indent=1))
        staging.rename(root)
    return root, build

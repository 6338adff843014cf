"""The dependencies run one way (docs/hacking.md, "Where things live"): analyzers/
imports nothing of fputrace but the trace layer, fputrace.trace; the trace
layer imports neither the analyzers nor anything of fputrace above it. Read
from the source with ast, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module in ("fputrace", "analyzers"):
                # `from fputrace import record` imports fputrace.record
                out.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return out


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offending(directory: Path, allowed: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Per module under directory, the imports of a forbidden package that
    are not of the allowed one."""
    bad = {}
    for path in sorted(directory.rglob("*.py")):
        wrong = sorted(name for name in imports_of(path)
                       if any(in_package(name, f) for f in forbidden)
                       and not in_package(name, allowed))
        if wrong:
            bad[path.name] = wrong
    return bad


def test_analyzers_import_only_the_trace_layer() -> None:
    assert offending(ROOT / "analyzers", "fputrace.trace", ("fputrace",)) == {}


def test_the_trace_layer_imports_nothing_above_it() -> None:
    assert offending(ROOT / "fputrace" / "trace", "fputrace.trace",
                     ("fputrace", "analyzers")) == {}


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from fputrace.kernel import debian\n    import analyzers.costs\n"
                 "from fputrace import record\n")
    assert offending(tmp_path, "fputrace.trace", ("fputrace", "analyzers")) == {
        "m.py": ["analyzers.costs", "fputrace.kernel", "fputrace.record"]}


# ---- the plugin: the core names no architecture ----------------------------

PLUGIN = ROOT / "plugin"
# The core's files; each architecture sits behind struct arch_ops.
PLUGIN_CORE = ("fputrace.c", "task.c", "probe.c", "translate.c", "trace.c")
ARCH_IDENTIFIER = re.compile(r"\b(?:x86|a64)_\w+")


def code_of(text: str) -> str:
    """C source without its comments and string literals."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def arch_names_in(path: Path) -> list[str]:
    """The architecture identifiers path's code uses, outside its arches[]
    table (the one place the core chooses among them)."""
    code = re.sub(r"arches\[\]\s*=\s*\{[^}]*\}", " ", code_of(path.read_text()))
    return sorted(set(ARCH_IDENTIFIER.findall(code)))


def test_the_plugin_core_names_no_architecture() -> None:
    assert {name: arch_names_in(PLUGIN / name) for name in PLUGIN_CORE} == \
        {name: [] for name in PLUGIN_CORE}


def test_the_core_header_names_architectures_only_in_its_unions() -> None:
    # fputrace.h includes x86.h and arm64.h for the per-vCPU and
    # per-instruction unions and declares the two ops tables; nothing else.
    names = arch_names_in(PLUGIN / "fputrace.h")
    assert names == ["a64_insn", "a64_ops", "a64_vcpu", "x86_insn", "x86_ops", "x86_vcpu"]


def test_the_architectures_call_only_the_core(tmp_path: Path) -> None:
    # x86's files do not reach into arm64.c's or the other way round.
    for path in PLUGIN.glob("x86*.[ch]"):
        assert not re.findall(r"\ba64_\w+", code_of(path.read_text())), path.name
    assert not re.findall(r"\bx86_\w+", code_of((PLUGIN / "arm64.c").read_text()))


def test_the_plugin_check_sees_an_architecture_in_the_core(tmp_path: Path) -> None:
    p = tmp_path / "core.c"
    p.write_text('/* x86_ops in a comment */\nstatic const struct arch_ops *const arches[] = '
                 '{ &x86_ops, &a64_ops };\nint f(void) { return a64_fp_code_add(1, 2); }\n'
                 'const char *s = "x86_64";\n')
    assert arch_names_in(p) == ["a64_fp_code_add"]


# ---- paths: a layer reaches no file of a layer above it ----------------------

def path_strings(path: Path) -> list[str]:
    """The string constants of a module that name a directory of the tree."""
    return [node.value for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.search(r"(?:^|/)(?:analyzers|tests|bench|fputrace)(?:/|$)", node.value)]


def test_the_trace_layer_names_no_file_above_it() -> None:
    # The reader's compiled helper is its own (fputrace/trace/ftr-read.c), not
    # the analyzers' library; nothing in it names their files.
    found = {p.name: path_strings(p) for p in sorted((ROOT / "fputrace" / "trace").glob("*.py"))}
    assert {name: s for name, s in found.items() if s} == {}


def test_the_path_check_sees_a_path(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text('HEADER = "analyzers/engine/fpanalysis.h"\nX = "tests"\nY = "contests"\n')
    assert path_strings(p) == ["analyzers/engine/fpanalysis.h", "tests"]


# ---- C includes: the shared headers are the only way across ------------------

# What the byte format, the hash and the checksum are: one header each in
# plugin/, which the plugin, the reader's helper and the analyzers' engine all
# include.
SHARED_HEADERS = ("ftr-format.h", "ftr-hash.h", "ftr-crc32c.h")


def reaching_out(directory: Path, shared: Path) -> dict[str, list[str]]:
    """The quoted includes of directory's C files that leave it for anything
    but one of shared's SHARED_HEADERS, as written."""
    found: dict[str, list[str]] = {}
    allowed = {(shared / name).resolve() for name in SHARED_HEADERS}
    for p in sorted(directory.glob("*.[ch]")):
        out = [name for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', p.read_text(), re.M)
               if (p.parent / name).resolve().parent != directory.resolve()
               and (p.parent / name).resolve() not in allowed]
        if out:
            found[p.name] = out
    return found


def test_c_code_crosses_layers_only_through_the_shared_headers() -> None:
    # The engine and the reader's helper take the format, hash and checksum
    # from plugin/'s shared headers and nothing else of it; the plugin
    # includes nothing of the layers that read what it writes.
    for directory in ("analyzers/engine", "fputrace/trace", "plugin"):
        assert reaching_out(ROOT / directory, ROOT / "plugin") == {}, directory


def test_the_include_check_sees_an_include(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "plugin").mkdir()
    (tmp_path / "engine" / "a.c").write_text(
        '#include "b.h"\n#include "../plugin/ftr-hash.h"\n#include "../plugin/x86.h"\n')
    assert reaching_out(tmp_path / "engine", tmp_path / "plugin") == {
        "a.c": ["../plugin/x86.h"]}

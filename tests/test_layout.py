"""The dependencies run one way (README, "Where things live"): analyzers/
imports nothing of fputrace but the trace layer, fputrace.trace; the trace
layer imports neither the analyzers nor anything of fputrace above it. Read
from the source with ast, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
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

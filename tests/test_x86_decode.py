"""The plugin's x86 decoder, as a unit: tests/x86_decode_test.c checks
plugin/x86-decode.c against a table of encodings derived by hand from the
Intel SDM (ModRM/SIB forms, 16-bit addressing, the groups 15 and 9 members
that are not state operations, prefixes that change the instruction)."""

from __future__ import annotations

import subprocess

from conftest import require

from fputrace.paths import build_dir


def test_the_decoder_agrees_with_the_table() -> None:
    binary = build_dir() / "x86-decode-test"
    require(binary.exists(), f"{binary} not built: run 'make setup'")
    p = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout
    assert " 0 failed" in p.stdout

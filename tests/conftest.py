"""Shared fixtures. `make test` sets FPUTRACE_REQUIRE_ALL=1: then a missing
prerequisite (QEMU, the built plugin, a kernel download) fails the test
instead of skipping it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fputrace.paths import build_dir

REQUIRE_ALL = os.environ.get("FPUTRACE_REQUIRE_ALL") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (or, under make test, fail) unless condition holds."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"prerequisite missing under make test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def qemu_plugin() -> Path:
    plugin = build_dir() / "libfputrace.so"
    require(shutil.which("qemu-system-x86_64") is not None,
            "qemu-system-x86_64 not installed (make setup)")
    require(plugin.exists(), f"{plugin} not built (make setup)")
    return plugin


@pytest.fixture(scope="session")
def conformance_image(qemu_plugin: Path) -> Path:
    image = build_dir() / "tests" / "conformance" / "conformance.elf"
    require(image.exists(), f"{image} not built (make setup)")
    return image

"""Shared fixtures. `make test` sets FPUTRACE_REQUIRE_ALL=1: then a missing
prerequisite (QEMU, the built plugin, a kernel download) fails the test
instead of skipping it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fputrace.paths import build_dir

REQUIRE_ALL = os.environ.get("FPUTRACE_REQUIRE_ALL") == "1"

# make test draws the same examples every run, so that its verdict does not
# depend on luck; run alone, pytest explores new ones each time.
settings.register_profile("make-test", derandomize=True, database=None)
if REQUIRE_ALL:
    settings.load_profile("make-test")


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


# The layers, fastest first (README, `make test-fast`): every test is in
# exactly one, by its file.
PLUGIN_LAYER = {"test_conformance.py", "test_conformance_arm64.py", "test_modes.py"}


def layer_of(path: Path) -> str:
    if path.name.startswith("test_e2e_"):
        return "e2e"
    if path.name in PLUGIN_LAYER:
        return "plugin"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(layer_of(Path(str(item.fspath))))

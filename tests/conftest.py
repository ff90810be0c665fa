"""Shared fixtures: real server processes, one per backend per module."""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.conformance.wire import PASSWORD
from tests.fixtures import Names, Server, SmallDisk
from tests.servers import ALL_BACKENDS, External, start

# Never touch the user's own client config and data, or server data, from a test.
os.environ.setdefault("MSG_CONFIG_DIR", tempfile.mkdtemp(prefix="msg-config-"))
os.environ.setdefault("MSGSRV_DATA_DIR", tempfile.mkdtemp(prefix="msgsrv-data-"))
os.environ.setdefault("MSG_DATA_DIR", tempfile.mkdtemp(prefix="msg-data-"))  # downloads
os.environ["MSG_PASSWORD"] = PASSWORD  # the `msg` processes log in with the suite's password

settings.register_profile(
    "ci", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.register_profile("nightly", deadline=None, max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server",
        default=None,
        help="HOST:PORT of a running server for the conformance suite (instead of starting each backend)",
    )
    parser.addoption(
        "--backends", default=",".join(ALL_BACKENDS), help="comma-separated backends to test (default: all six)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backends").split(",")
        chosen = getattr(metafunc.module, "BACKENDS", chosen)  # a module may pin one backend
        if metafunc.config.getoption("--server"):
            chosen = ["external"]
        metafunc.parametrize("backend", chosen, scope="module")


_names = itertools.count(1)


@pytest.fixture
def names() -> Names:
    """Fresh user names for each test: names("alice") -> "alice7"."""

    def make(base: str) -> str:
        return f"{base}{next(_names)}"

    return make


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, backend: str) -> Iterator[Server]:
    """The conformance server for this module and backend, with the module's flags."""
    external: str | None = request.config.getoption("--server")
    if external:
        yield External(external)
        return
    flags: tuple[str, ...] = getattr(request.module, "SERVER_FLAGS", ())
    proc = start(backend, *flags)
    yield proc
    proc.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """``small_disk("4m")``: a directory on a size-limited file system (tmpfs) made by the
    test, so a full disk is a real one. It needs root (CI runs as root): where it cannot be
    made, the test fails instead of skipping, so a disk-full case is never silently untested."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.fail(f"cannot make a {size} file system (mount -t tmpfs needs root): {done.stderr.decode()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)

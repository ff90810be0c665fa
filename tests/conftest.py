"""Shared fixtures: real server processes, one per backend per module."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.conformance.wire import PASSWORD
from tests.servers import ALL_BACKENDS, ServerProcess, start

# Never touch the user's own client config or server data from a test.
os.environ.setdefault("MSG_CONFIG_DIR", tempfile.mkdtemp(prefix="msg-config-"))
os.environ.setdefault("MSGSRV_DATA_DIR", tempfile.mkdtemp(prefix="msgsrv-data-"))
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
def names() -> Iterator[object]:
    """Fresh user names for each test: names("alice") -> "alice7"."""

    def make(base: str) -> str:
        return f"{base}{next(_names)}"

    yield make


class External:
    """A server someone else runs (``--server HOST:PORT``)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.backend = "external"


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, backend: str) -> Iterator[ServerProcess | External]:
    """The conformance server for this module and backend, with the module's flags."""
    external = request.config.getoption("--server")
    if external:
        yield External(external)
        return
    flags = getattr(request.module, "SERVER_FLAGS", ())
    proc = start(backend, *flags)
    yield proc
    proc.stop()

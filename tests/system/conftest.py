"""System tests look inside their server (its log, its banner, its process) and need the
module's own flags: each module gets a server this suite started, never ``--server``'s."""

from __future__ import annotations

import pytest

from tests.fixtures import Server
from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def server(server: Server) -> ServerProcess:
    """The module's server (the suite-wide fixture), which here is always a ServerProcess."""
    if not isinstance(server, ServerProcess):
        pytest.skip("system tests start their own server; --server is for the conformance suite")
    return server

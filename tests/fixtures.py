"""The types of the shared fixtures (``conftest.py``), for the tests' signatures:
``def test_x(server: Server, names: Names) -> None``. (A test module imports these from
here, never from a conftest, which pytest loads itself.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from tests.servers import External, ServerProcess

#: ``names("alice")`` -> ``"alice7"``: a user name no other test uses.
Names: TypeAlias = Callable[[str], str]

#: ``small_disk("4m")`` -> a directory on a file system of that size.
SmallDisk: TypeAlias = Callable[[str], Path]

#: The module's server: one this suite started (tests/system/ always gets one of these,
#: see its conftest), or with ``--server HOST:PORT`` one it only knows the address of.
Server: TypeAlias = ServerProcess | External

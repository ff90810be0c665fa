"""The docs that must agree with the code: README commands, CI, the state diagram."""

from __future__ import annotations

import re
from pathlib import Path

from csce513msg.hub.diagram import mermaid

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    server_cmd, test_cmd = readme_commands()
    assert "msgsrv" in server_cmd and "pip install" in server_cmd
    assert "nox" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), "CI must run exactly the README's test command"


def test_protocol_doc_shows_the_current_state_diagram() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert mermaid() in doc, "regenerate with: python -m csce513msg.hub.diagram"


def test_protocol_doc_lists_every_error_code() -> None:
    from csce513msg.protocol import ErrorCode

    doc = (ROOT / "docs" / "protocol.md").read_text()
    for code in ErrorCode:
        assert f"| {code.value} | `{code.name}` |" in doc


def test_protocol_doc_states_the_cap_on_the_waiting_count() -> None:
    from csce513msg.protocol import WAITING_CAP

    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert f"counts\n  no further than **{WAITING_CAP}**" in doc

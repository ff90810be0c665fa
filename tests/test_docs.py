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


def test_client_doc_tables_every_command_help_lists() -> None:
    """Each of msg's commands has a row in docs/client.md's table, and /help (a student's
    or staff's) names it: a command added to one and not the others fails here."""
    from csce513msg.client.chat import COMMANDS, HELP
    from csce513msg.client.classroom import HELP_STAFF, HELP_STUDENT

    doc = (ROOT / "docs" / "client.md").read_text()
    table = doc.split("## Commands", 1)[1].split("\n\n", 2)[1]
    cells = {cell for row in table.splitlines() for cell in re.findall(r"`(/[a-z]+!?)[ `]", row.split(" | ")[0])}
    helped = set(re.findall(r"(/[a-z]+!?)(?![\w/])", f"{HELP}\n{HELP_STUDENT}\n{HELP_STAFF}"))
    assert set(COMMANDS) - cells == set(), "commands without a row in docs/client.md"
    assert set(COMMANDS) - helped == set(), "commands /help does not name"

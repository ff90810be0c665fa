"""The state table is the single source of truth: every change of ``session.state``
goes through ``Engine.move``, which reads ``TRANSITIONS``; the diagram is drawn from it."""

from __future__ import annotations

import ast
from pathlib import Path

import csce513msg.hub as hub_package
from csce513msg.hub import TRANSITIONS, State
from csce513msg.hub.engine import CLOSES, INITIAL

HUB = Path(hub_package.__file__).parent


def test_only_move_assigns_a_session_state() -> None:
    """AUTHENTICATING's exits were once assigned by hand in gate.py, beside the table."""
    offenders = []
    for path in HUB.glob("*.py"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) or func.name == "move":
                continue
            for node in ast.walk(func):
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                for target in targets:
                    if isinstance(target, ast.Attribute) and target.attr == "state":
                        offenders.append(f"{path.name}:{getattr(node, 'lineno', '?')} in {func.name}")
    assert offenders == []


def test_every_state_is_reached_and_can_end() -> None:
    reached = {INITIAL} | {target for _rule, target in TRANSITIONS.values()}
    assert reached == set(State)
    assert set(CLOSES) == set(State)

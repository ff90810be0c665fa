"""Draw the session state machine from ``TRANSITIONS`` (a Mermaid diagram).

``python -m csce513msg.hub.diagram`` prints it; docs/protocol.md embeds the output,
and a test checks the two still agree. Every edge comes from the engine's tables:
``INITIAL``, ``TRANSITIONS`` (requests, and a login's answers) and ``CLOSES``.
"""

from __future__ import annotations

from .engine import CLOSES, INITIAL, TRANSITIONS
from .session import AnyRequest, LoginAccepted, LoginRefused

#: How an event that is not a request reads on an edge
LABELS: dict[type, str] = {
    AnyRequest: "any request / held until the login is answered",
    LoginAccepted: "password right, login recorded / LoginOk",
    LoginRefused: "refused / AUTH_FAILED, AUTH_THROTTLED, NAME_TAKEN, RATE_LIMITED, STORE_FAILED, INTERNAL",
}


def mermaid() -> str:
    """Return the state diagram as Mermaid source."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL.name}: connect / Welcome"]
    for (state, event), (_handler, target) in TRANSITIONS.items():
        lines.append(f"    {state.name} --> {target.name}: {LABELS.get(event, event.__name__)}")
    lines += [f"    {state.name} --> [*]: {how}" for state, how in CLOSES.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid())

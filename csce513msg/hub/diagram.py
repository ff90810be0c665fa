"""Draw the session state machine from ``TRANSITIONS`` (a Mermaid diagram).

``python -m csce513msg.hub.diagram`` prints it; docs/protocol.md embeds the output,
and a test checks the two still agree.
"""

from __future__ import annotations

from .engine import TRANSITIONS


def mermaid() -> str:
    """Return the state diagram as Mermaid source."""
    lines = ["stateDiagram-v2", "    [*] --> AWAIT_HELLO: connect / Welcome"]
    for (state, msg_type), (_handler, target) in TRANSITIONS.items():
        lines.append(f"    {state.name} --> {target.name}: {msg_type.__name__}")
    # AUTHENTICATING ends with a job's answer, not a request (gate.py: _hash_done, _logins_done)
    lines.append("    AUTHENTICATING --> READY: password ok, login recorded / LoginOk")
    lines.append(
        "    AUTHENTICATING --> AWAIT_LOGIN: refused / AUTH_FAILED, AUTH_THROTTLED, NAME_TAKEN, RATE_LIMITED,"
        " STORE_FAILED"
    )
    for name in ("AWAIT_HELLO", "AWAIT_LOGIN", "AUTHENTICATING"):  # the sweep's deadlines (engine._overdue)
        lines.append(f"    {name} --> [*]: close, reset, login or frame timeout, shutdown")
    lines.append("    READY --> [*]: close, reset, idle or frame timeout, shutdown, account changed")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid())

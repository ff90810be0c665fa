"""The chat core: a pure state machine behind the engine contract (shared/STYLE.md)."""

from ..protocol.names import NAME_RULE, direct_stream, fold_name
from .actions import Abort, Action, Close, ConnId, Lane, Submit, Write
from .admission import Throttle
from .config import CHUNK_RANGE, HubConfig, Visibility
from .contract import EngineAPI
from .delivery import HISTORY_PAGE
from .engine import TRANSITIONS, Engine
from .gate import Passwords
from .session import State

__all__ = [
    "CHUNK_RANGE",
    "HISTORY_PAGE",
    "NAME_RULE",
    "fold_name",
    "TRANSITIONS",
    "Abort",
    "Action",
    "Close",
    "ConnId",
    "Engine",
    "EngineAPI",
    "HubConfig",
    "Lane",
    "Passwords",
    "State",
    "Submit",
    "Throttle",
    "Visibility",
    "Write",
    "direct_stream",
]

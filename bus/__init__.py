"""The inter-departmental collaboration bus: what integrators import.

    from bus import BusClient, Envelope, model_for, Settings

Everything else (agents, the app, the CLI) is the bus's own machinery.
"""

from bus.errors import BusError
from bus.schemas import EVENT_TYPES, Envelope, is_valid_uscc, make_uscc, model_for, uscc_problem
from bus.settings import Settings
from bus.streaming.client import BusClient, Receipt
from bus.streaming.codec import EventCodec

__version__ = "0.1.0"

__all__ = [
    "EVENT_TYPES",
    "BusClient",
    "BusError",
    "Envelope",
    "EventCodec",
    "Receipt",
    "Settings",
    "is_valid_uscc",
    "make_uscc",
    "model_for",
    "uscc_problem",
]

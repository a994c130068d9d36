"""Schemas and the envelope: the ground floor. Imports nothing from the rest of the bus."""

from bus.schemas.envelope import Envelope
from bus.schemas.events import EVENT_TYPES, EventSpec, model_for, spec_for
from bus.schemas.uscc import is_valid_uscc, make_uscc, uscc_problem

__all__ = [
    "EVENT_TYPES",
    "Envelope",
    "EventSpec",
    "is_valid_uscc",
    "make_uscc",
    "model_for",
    "spec_for",
    "uscc_problem",
]

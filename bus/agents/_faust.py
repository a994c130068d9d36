"""Small bridges to Faust internals that batch processing needs.

Faust tables find the changelog partition through the *current event*, which Faust sets
while iterating a stream one event at a time. Batches from ``take_events`` leave it unset
(or set to the batch's last event), so a table write would raise or land on the wrong
partition. ``current`` sets it for the event being handled.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from faust.streams import _current_event
from faust.types import EventT


@contextmanager
def current(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event (for table writes) inside the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)

"""An HTTP gateway for department systems that cannot speak Kafka.

It authenticates a department by API key, validates what it sends with the same models and
directory as the ingest agent (so mistakes are answered at once, naming the field), and
publishes to the ingress topic. It never decides anything the bus decides: acceptance,
de-duplication and routing stay with the ingest agent. See docs/gateway.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI reads inboxes through ``bus.edge.gateway.inbox`` without the gateway extra.
    if name == "create_app":
        from bus.edge.gateway.app import create_app

        return create_app
    raise AttributeError(name)

"""An HTTP gateway for department systems that cannot speak Kafka.

It authenticates a department by API key, validates what it sends with the same models and
directory as the ingest agent (so mistakes are answered at once, naming the field), and
publishes to the ingress topic. It never decides anything the bus decides: acceptance,
de-duplication and routing stay with the ingest agent. See docs/gateway.md.
"""

from __future__ import annotations

from bus.gateway.app import create_app

__all__ = ["create_app"]

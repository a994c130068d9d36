"""Applications for any matter (一件事): one shape of request, withdrawal and decision, so a
policy office can start a new matter without a new event type.

The matter a request is for is named in it; the matter's file says what follows (a matter
starts from ``application.submitted`` with ``when: {trigger.matter: its-name}``).
"""

from __future__ import annotations

from pydantic import Field

from bus.schemas.approval import ApplicationNumber
from bus.schemas.types import Day, DepartmentCode, Line, Payload, Text

MatterName = Field(
    min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9-]*$",
    description="the matter applied for, e.g. enterprise-deregistration",
)  # fmt: skip


class Detail(Payload):
    """One particular of an application, as the applying system names it."""

    name: Line = Field(min_length=1, max_length=64)
    value: Text


class ApplicationSubmitted(Payload):
    """An application lodged at a department's window for a matter."""

    matter: Line = MatterName
    application_number: Line = ApplicationNumber
    applicant: Text
    requested_by: DepartmentCode = Field(description="the department that lodged it")
    submitted_on: Day
    details: list[Detail] = Field(default_factory=list, max_length=50)


class ApplicationWithdrawn(Payload):
    """The applicant withdrew an application; its case ends where its matter says so."""

    matter: Line = MatterName
    application_number: Line = ApplicationNumber
    reason: Text


class ApplicationDecided(Payload):
    """How the bus decided an application, as the matter's outcome says."""

    matter: Line = MatterName
    application_number: Line = ApplicationNumber
    result: Line = Field(min_length=1, max_length=64)
    details: list[Detail] = Field(default_factory=list, max_length=50)


class ApplicationDecidedV2(ApplicationDecided):
    """How the bus decided an application, as the matter's outcome says.

    Version 2: signed by the bus when its matter says so (``issue: decision``); ``signature``
    covers the decision document (``bus.domain.decisions``).
    """

    __avro_name__ = "ApplicationDecided"  # the record of version 1, read by readers of either

    key_id: Line | None = Field(default=None, description="The signing key, when signed")
    signature: Line | None = Field(default=None, description="Ed25519, base64, when signed")

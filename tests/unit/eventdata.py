"""Realistic events of every type, for the unit tests (not a test module itself).

Codes, names and case numbers look like what Kunshan's departments actually publish; the
USCCs are real published codes, so a check-character bug would show up here too.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for

# Codes published by real enterprises (from public registration records).
REAL_USCCS = (
    "91350100M000100Y43",
    "914403001922038216",
    "91330100799655058B",
    "91110000600001760P",
)
SUBJECT = "91330100799655058B"

OCCURRED_AT = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)

# event type -> (source department, payload)
PAYLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "enterprise.registered": (
        "ks.amr",
        {
            "name": "昆山花桥精密电子科技有限公司",
            "legal_representative": "王伟",
            "legal_representative_id": "320583198001011238",
            "registered_capital": Decimal("5000000.00"),
            "enterprise_type": "有限责任公司",
            "industry_code": "C3971",
            "town": "Huaqiao",
            "address": "昆山市花桥镇金阳路88号",
            "established_on": date(2018, 6, 12),
        },
    ),
    "enterprise.changed": (
        "ks.amr",
        {
            "legal_representative": "李娜",
            "registered_capital": Decimal("8000000.00"),
            "effective_on": date(2026, 2, 27),
        },
    ),
    "enterprise.deregistered": (
        "ks.amr",
        {"reason": "股东会决议解散", "deregistered_on": date(2026, 2, 28)},
    ),
    "penalty.imposed": (
        "ks.enforcement.huaqiao",
        {
            "case_number": "昆花综执罚决字〔2026〕第0123号",
            "kind": "fine",
            "violation": "施工工地未采取扬尘防治措施",
            "legal_basis": "《中华人民共和国大气污染防治法》第一百一十五条",
            "amount": Decimal("20000.00"),
            "decided_on": date(2026, 2, 10),
            "agency": "ks.enforcement.huaqiao",
            "publicity_until": date(2027, 2, 10),
        },
    ),
    "penalty.revoked": (
        "ks.enforcement.huaqiao",
        {
            "case_number": "昆花综执罚决字〔2026〕第0123号",
            "reason": "行政复议决定撤销原处罚决定",
            "revoked_on": date(2026, 4, 1),
        },
    ),
    "penalty.repaired": (
        "ks.credit",
        {
            "case_number": "昆花综执罚决字〔2026〕第0123号",
            "repaired_on": date(2027, 3, 1),
            "decision_number": "昆信修复〔2027〕第0045号",
        },
    ),
    "licence.granted": (
        "ks.approval",
        {
            "licence_number": "JY13205830123456",
            "licence_type": "食品经营许可证",
            "issuing_department": "ks.approval",
            "scope": "预包装食品销售",
            "valid_from": date(2026, 1, 5),
            "valid_until": date(2031, 1, 4),
        },
    ),
    "licence.revoked": (
        "ks.approval",
        {
            "licence_number": "JY13205830123456",
            "reason": "以欺骗手段取得许可",
            "revoked_on": date(2026, 5, 20),
        },
    ),
    "certificate.requested": (
        "ks.finance",
        {
            "period_start": date(2023, 1, 1),
            "period_end": date(2025, 12, 31),
            "purpose": "ipo",
            "requested_by": "ks.finance",
            "applicant": "张敏",
        },
    ),
    "certificate.issued": (
        "ks.bus",
        {
            "serial": "KS-HG-2026-000123",
            "request_event_id": "6f1c1d2e-8a4b-4c7e-9f00-1234567890ab",
            "enterprise_name": "昆山花桥精密科技有限公司",
            "period_start": date(2023, 1, 1),
            "period_end": date(2025, 12, 31),
            "purpose": "ipo",
            "result": "record_found",
            "record": [
                {
                    "case_number": "昆花综执罚决字〔2024〕第0012号",
                    "agency": "ks.enforcement.huaqiao",
                    "decided_on": date(2024, 5, 6),
                    "state": "repaired",
                }
            ],
            "issuing_authority": "ks.bus",
            "issued_at": datetime(2026, 3, 2, 2, 0, tzinfo=UTC),
            "key_id": "ks-bus-2026-01",
            "signature": "bm90IGEgcmVhbCBzaWduYXR1cmU=",
        },
    ),
    "approval.requested": (
        "ks.approval",
        {
            "application_number": "KS-SP-2026-000123",
            "title": "建设工程施工许可",
            "departments": ["ks.hrss", "ks.town.huaqiao"],
            "applicant": "王芳",
            "submitted_on": date(2026, 11, 2),
        },
    ),
    "application.submitted": (
        "ks.amr",
        {
            "matter": "enterprise-deregistration",
            "application_number": "KS-ZX-2026-000042",
            "applicant": "张伟",
            "requested_by": "ks.amr",
            "submitted_on": date(2026, 11, 2),
            "details": [{"name": "reason", "value": "股东会决议解散"}],
        },
    ),
    "application.withdrawn": (
        "ks.amr",
        {
            "matter": "enterprise-deregistration",
            "application_number": "KS-ZX-2026-000042",
            "reason": "申请人撤回",
        },
    ),
    "application.decided": (
        "ks.bus",
        {
            "matter": "enterprise-deregistration",
            "application_number": "KS-ZX-2026-000042",
            "result": "deregistered",
        },
    ),
    "report.requested": (
        "ks.credit",
        {
            "period_start": date(2023, 1, 1),
            "period_end": date(2025, 12, 31),
            "purpose": "bidding",
            "requested_by": "ks.credit",
            "applicant": "李娜",
        },
    ),
    "report.issued": (
        "ks.bus",
        {
            "serial": "KS-2026-7G3M9QK2XW4P",
            "request_event_id": "6f1c1d2e-8a4b-4c7e-9f00-1234567890ab",
            "enterprise_name": "昆山花桥精密科技有限公司",
            "period_start": date(2023, 1, 1),
            "period_end": date(2025, 12, 31),
            "purpose": "bidding",
            "result": "records",
            "domains": [
                {"domain": "market_regulation", "name": "市场监管", "result": "no_record"},
                {
                    "domain": "tax",
                    "name": "税务",
                    "result": "records",
                    "records": [
                        {
                            "case_number": "昆税罚〔2024〕17号",
                            "agency": "ks.tax",
                            "kind": "fine",
                            "decided_on": date(2024, 4, 10),
                            "state": "active",
                        }
                    ],
                },
            ],
            "issuing_authority": "ks.bus",
            "issued_at": datetime(2026, 3, 2, 2, 0, tzinfo=UTC),
            "key_id": "ks-bus-2026-01",
            "signature": "bm90IGEgcmVhbCBzaWduYXR1cmU=",
        },
    ),
    "approval.opinion": (
        "ks.hrss",
        {"application_number": "KS-SP-2026-000123", "opinion": "approve", "note": "同意"},
    ),
    "approval.decided": (
        "ks.bus",
        {
            "application_number": "KS-SP-2026-000123",
            "decision": "approve",
            "opinions": [
                {"department": "ks.hrss", "opinion": "approve", "note": "同意"},
                {"department": "ks.town.huaqiao", "opinion": "approve"},
            ],
        },
    ),
    "task.created": (
        "ks.bus",
        {
            "task_id": "task-6f1c1d2e8a4b4c7e",
            "matter": "compliance-certificate",
            "title": "Review penalty 昆花综执罚决字〔2024〕第0012号 for a compliance certificate",
            "assignee": "ks.enforcement.huaqiao",
            "due_at": datetime(2026, 3, 9, 1, 30, tzinfo=UTC),
            "working_days": 5,
            "supervisor": "ks.finance",
            "evidence": ["昆花综执罚决字〔2024〕第0012号"],
        },
    ),
    "task.accepted": ("ks.enforcement.huaqiao", {"task_id": "task-6f1c1d2e8a4b4c7e"}),
    "task.completed": (
        "ks.enforcement.huaqiao",
        {"task_id": "task-6f1c1d2e8a4b4c7e", "outcome": "cleared", "note": "已整改完毕"},
    ),
    "task.rejected": (
        "ks.enforcement.zhoushi",
        {"task_id": "task-6f1c1d2e8a4b4c7e", "reason": "not a case of this bureau"},
    ),
    "task.overdue": (
        "ks.bus",
        {
            "task_id": "task-6f1c1d2e8a4b4c7e",
            "assignee": "ks.enforcement.huaqiao",
            "due_at": datetime(2026, 3, 9, 1, 30, tzinfo=UTC),
        },
    ),
    "task.escalated": (
        "ks.bus",
        {
            "task_id": "task-6f1c1d2e8a4b4c7e",
            "escalated_to": "ks.finance",
            "reason": "review not completed within 5 working days",
        },
    ),
    "task.cancelled": (
        "ks.bus",
        {
            "task_id": "task-6f1c1d2e8a4b4c7e",
            "reason": "case deregistered: enterprise.deregistered",
        },
    ),
}


def fields(event_type: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of a realistic event of ``event_type`` (a fresh copy)."""
    source, payload = PAYLOADS[event_type]
    out: dict[str, Any] = {
        "event_type": event_type,
        "source": source,
        "occurred_at": OCCURRED_AT,
        "subject": SUBJECT,
        "payload": dict(payload),
    }
    out.update(overrides)
    return out


def build(event_type: str, **overrides: Any) -> Envelope:
    """A realistic, valid event of ``event_type`` (latest version)."""
    return model_for(event_type)(**fields(event_type, **overrides))

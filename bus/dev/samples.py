"""Realistic sample events for the demo, the benchmarks and the tests.

Kunshan's towns, plausible enterprise names and penalty cases, valid USCCs. Deterministic
for a given seed, so a failing test or a benchmark can be replayed exactly.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.schemas.uscc import make_uscc

TOWN_NAMES = {
    "Huaqiao": "花桥", "Zhoushi": "周市", "Lujia": "陆家", "Bacheng": "巴城", "Qiandeng": "千灯",
    "Dianshanhu": "淀山湖", "Zhouzhuang": "周庄", "Jinxi": "锦溪", "Zhangpu": "张浦",
}  # fmt: skip
TOWNS = tuple(TOWN_NAMES)
_PREFIX = ("昆山", "苏州", "江苏")
_CORE = ("精密", "光电", "智能", "新材料", "电子", "汽车零部件", "生物医药", "机械", "食品", "物流")
_SUFFIX = ("科技有限公司", "制造有限公司", "电子有限公司", "实业有限公司")
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明")
_ROADS = ("人民路", "长江路", "黄河路", "沿沪大道", "前进路", "金阳路", "新华路")
_INDUSTRY = ("C3971", "C3670", "C3985", "C3311", "C2710", "G5990", "C1495", "I6510")
_VIOLATIONS = (
    ("未按规定设置油烟净化设施", "《中华人民共和国大气污染防治法》第一百一十八条"),
    ("擅自占用城市道路堆放物料", "《城市道路管理条例》第四十二条"),
    ("未经批准擅自设置大型户外广告", "《江苏省城市市容和环境卫生管理条例》第四十八条"),
    ("施工工地未采取扬尘防治措施", "《中华人民共和国大气污染防治法》第一百一十五条"),
    ("随意倾倒建筑垃圾", "《城市建筑垃圾管理规定》第二十六条"),
)


def town_code(town: str) -> str:
    """The enforcement bureau's department code for a town."""
    return f"ks.enforcement.{town.lower()}"


def _id_number(rng: random.Random) -> str:
    born = date(1960, 1, 1) + timedelta(days=rng.randrange(0, 40 * 365))
    body = f"320583{born:%Y%m%d}{rng.randrange(1000):03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]
    return body + check


@dataclass(frozen=True)
class Enterprise:
    """A sample enterprise: what its registration says."""

    uscc: str
    name: str
    town: str
    legal_representative: str
    legal_representative_id: str


def enterprise(rng: random.Random) -> Enterprise:
    """A plausible Kunshan enterprise."""
    town = rng.choice(TOWNS)
    name = rng.choice(_PREFIX) + TOWN_NAMES[town] + rng.choice(_CORE) + rng.choice(_SUFFIX)
    person = rng.choice(_SURNAMES) + rng.choice(_GIVEN) + rng.choice(("", *_GIVEN))
    return Enterprise(make_uscc(rng=rng), name, town, person, _id_number(rng))


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def registered(e: Enterprise, rng: random.Random, when: datetime | None = None) -> Envelope:
    """``enterprise.registered`` for ``e`` from market regulation."""
    return model_for("enterprise.registered")(
        event_id=_uuid(rng),
        event_type="enterprise.registered",
        source="ks.amr",
        occurred_at=when or datetime.now(UTC),
        subject=e.uscc,
        payload={
            "name": e.name,
            "legal_representative": e.legal_representative,
            "legal_representative_id": e.legal_representative_id,
            "registered_capital": Decimal(rng.randrange(100, 50_000) * 10_000),
            "enterprise_type": "有限责任公司",
            "industry_code": rng.choice(_INDUSTRY),
            "town": e.town,
            "address": f"昆山市{TOWN_NAMES[e.town]}镇{rng.choice(_ROADS)}{rng.randrange(1, 999)}号",
            "established_on": date(2010, 1, 1) + timedelta(days=rng.randrange(0, 5000)),
        },
    )


def penalty(
    e: Enterprise, rng: random.Random, *, n: int = 1, decided_on: date | None = None
) -> Envelope:
    """``penalty.imposed`` on ``e`` by the enforcement bureau of its town."""
    violation, basis = rng.choice(_VIOLATIONS)
    decided = decided_on or date(2026, 1, 1) + timedelta(days=rng.randrange(0, 300))
    agency = town_code(e.town)
    return model_for("penalty.imposed")(
        event_id=_uuid(rng),
        event_type="penalty.imposed",
        source=agency,
        occurred_at=datetime.combine(decided, datetime.min.time(), UTC) + timedelta(hours=9),
        subject=e.uscc,
        payload={
            "case_number": f"昆{TOWN_NAMES[e.town][0]}综执罚决字〔{decided.year}〕第{n:04d}号",
            "kind": "fine",
            "violation": violation,
            "legal_basis": basis,
            "amount": Decimal(rng.randrange(5, 200) * 1000),
            "decided_on": decided,
            "agency": agency,
            "publicity_until": decided + timedelta(days=365),
        },
    )


def penalties(count: int, *, seed: int = 7, enterprises: int = 500) -> list[Envelope]:
    """``count`` penalties over a pool of enterprises (for load tests and benchmarks)."""
    rng = random.Random(seed)
    pool = [enterprise(rng) for _ in range(enterprises)]
    return [penalty(rng.choice(pool), rng, n=i + 1) for i in range(count)]


def registrations(*, seed: int = 7, enterprises: int = 500) -> list[Envelope]:
    """The registrations of the enterprises ``penalties`` with the same arguments penalises."""
    rng = random.Random(seed)
    pool = [enterprise(rng) for _ in range(enterprises)]
    when = random.Random(seed + 1)
    return [registered(e, when) for e in pool]

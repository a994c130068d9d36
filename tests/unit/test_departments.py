"""The department directory: the shipped file loads and says who may publish what;
``authorise`` answers with reason codes; a wrong directory file stops the process with a
``ConfigurationError`` that names the file and the offending entry.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.domain.departments import Directory
from bus.errors import AuthorisationError, ConfigurationError
from bus.schemas.events import EVENT_TYPES

TOWNS = ("huaqiao", "zhoushi", "lujia", "bacheng", "qiandeng", "dianshanhu", "zhouzhuang",
         "jinxi", "zhangpu")  # fmt: skip

# Who publishes what, as the shipped directory says today.
TASKS = {"task.accepted", "task.completed", "task.rejected"}  # any assignee may answer
ANSWERS = {*TASKS, "approval.opinion"}  # ... and give an opinion when asked
PENALTIES = {"penalty.imposed", "penalty.revoked"}  # departments with a credit domain
OWNERS: dict[str, set[str]] = {
    "ks.amr": {
        "enterprise.registered",
        "enterprise.changed",
        "enterprise.deregistered",
        "application.submitted",
        "application.withdrawn",
        *PENALTIES,
        *ANSWERS,
    },
    "ks.finance": {"certificate.requested", "report.requested"},
    "ks.approval": {
        "licence.granted",
        "licence.revoked",
        "approval.requested",
        "report.requested",
        "application.submitted",
        "application.withdrawn",
        *ANSWERS,
    },
    "ks.credit": {"penalty.repaired", "report.requested", *TASKS},
    "ks.bus": {
        "certificate.issued",
        "report.issued",
        "approval.decided",
        "task.created",
        "task.overdue",
        "task.escalated",
        "task.cancelled",
        "application.decided",
    },
    "ks.tax": {*PENALTIES, *ANSWERS},
    "ks.hrss": {*PENALTIES, *ANSWERS},
    "ks.eco": {*PENALTIES, *ANSWERS},
    "ks.ema": {*PENALTIES, *ANSWERS},
    "ks.housing": {*PENALTIES, *ANSWERS},
    "ks.housingfund": ANSWERS,
    "ks.banking": TASKS,
    **{f"ks.enforcement.{t}": {*PENALTIES, *ANSWERS} for t in TOWNS},
    **{f"ks.town.{t}": ANSWERS for t in TOWNS},
}


@pytest.fixture(scope="module")
def directory() -> Directory:
    return Directory.load()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "departments.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped directory --------------------------------------------------------------------


def test_shipped_directory_lists_the_departments(directory: Directory) -> None:
    assert set(directory.departments) == set(OWNERS)
    huaqiao = directory.get("ks.enforcement.huaqiao")
    assert huaqiao is not None
    assert huaqiao.town == "Huaqiao"
    assert "花桥" in huaqiao.name
    assert directory.get("ks.nobody") is None


def test_every_event_type_has_an_owner(directory: Directory) -> None:
    owned = {t for d in directory.departments.values() for t in EVENT_TYPES if d.may_publish(t)}
    assert owned == set(EVENT_TYPES)


@pytest.mark.parametrize("code", sorted(OWNERS))
def test_authorise_follows_the_directory(directory: Directory, code: str) -> None:
    for event_type in EVENT_TYPES:
        if event_type in OWNERS[code]:
            directory.authorise(code, event_type)  # no exception
        else:
            with pytest.raises(AuthorisationError) as info:
                directory.authorise(code, event_type)
            assert info.value.reason == "auth.event_type"
            assert str(info.value) == f"department {code} may not publish {event_type}"


def test_family_wildcard_does_not_reach_other_families(directory: Directory) -> None:
    amr = directory.get("ks.amr")
    assert amr is not None
    assert amr.may_publish("enterprise.registered")
    assert not amr.may_publish("penalty.repaired")
    assert not amr.may_publish("enterprises.registered")


@pytest.mark.parametrize("source", ["ks.police", "KS.AMR", "ks.amr.", ""])
def test_unknown_source_has_its_own_reason(directory: Directory, source: str) -> None:
    with pytest.raises(AuthorisationError) as info:
        directory.authorise(source, "enterprise.registered")
    assert info.value.reason == "auth.unknown_source"
    assert f"source {source!r} is not in the department directory" in str(info.value)


def test_answers_are_per_directory(tmp_path: Path, directory: Directory) -> None:
    """The answer cache must not leak one directory's answer into another's."""
    directory.authorise("ks.amr", "enterprise.registered")
    other = Directory.load(
        write(tmp_path, "departments:\n  - {code: ks.amr, name: AMR, publishes: []}\n")
    )
    with pytest.raises(AuthorisationError) as info:
        other.authorise("ks.amr", "enterprise.registered")
    assert info.value.reason == "auth.event_type"
    directory.authorise("ks.amr", "enterprise.registered")


def test_a_minimal_valid_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "departments:\n"
        "  - code: ks.enforcement.huaqiao\n"
        "    name: 花桥镇综合行政执法局\n"
        "    town: Huaqiao\n"
        "    publishes: ['penalty.*']\n",
    )
    loaded = Directory.load(path)
    loaded.authorise("ks.enforcement.huaqiao", "penalty.repaired")
    assert loaded.departments["ks.enforcement.huaqiao"].publishes == ("penalty.*",)


# --- bad directory files --------------------------------------------------------------------


def test_unknown_key_in_an_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "departments:\n"
        "  - {code: ks.amr, name: AMR, publishes: ['enterprise.*']}\n"
        "  - {code: ks.tax, name: Tax, publish: ['penalty.imposed']}\n",
    )
    with pytest.raises(ConfigurationError) as info:
        Directory.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "departments.1.publish" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "departments: []\nagencies: []\n")
    with pytest.raises(ConfigurationError) as info:
        Directory.load(path)
    assert str(path) in str(info.value)
    assert "agencies" in str(info.value)


def test_bad_department_code(tmp_path: Path) -> None:
    path = write(tmp_path, "departments:\n  - {code: 'Market Regulation', name: AMR}\n")
    with pytest.raises(ConfigurationError) as info:
        Directory.load(path)
    assert str(path) in str(info.value)
    assert "departments.0.code" in str(info.value)


def test_duplicate_code(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "departments:\n"
        "  - {code: ks.amr, name: AMR, publishes: ['enterprise.*']}\n"
        "  - {code: ks.tax, name: Tax}\n"
        "  - {code: ks.amr, name: AMR again}\n",
    )
    with pytest.raises(ConfigurationError) as info:
        Directory.load(path)
    assert str(info.value) == f"department directory {path}: ks.amr listed twice"


@pytest.mark.parametrize("pattern", ["penalty.imposd", "tax.*", "enterprise", "*.granted.x"])
def test_pattern_matching_no_event_type(tmp_path: Path, pattern: str) -> None:
    path = write(
        tmp_path,
        f"departments:\n  - {{code: ks.tax, name: Tax, publishes: ['{pattern}']}}\n",
    )
    with pytest.raises(ConfigurationError) as info:
        Directory.load(path)
    assert str(info.value) == (
        f"department directory {path}: ks.tax publishes {pattern!r}, "
        "which matches no known event type"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigurationError, match="cannot read department directory"):
        Directory.load(path)


def test_not_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "departments: [unclosed\n")
    with pytest.raises(ConfigurationError) as info:
        Directory.load(path)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigurationError) as info:
        Directory.load(path)
    assert str(path) in str(info.value)

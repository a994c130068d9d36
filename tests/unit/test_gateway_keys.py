"""Gateway API keys: issued once, stored hashed, found by id, refused when wrong or revoked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bus.edge.gateway.keys import authenticate, issue_key, list_keys, revoke_key
from bus.errors import ConfigurationError


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "gateway-keys.json"


def test_an_issued_key_authenticates_its_department(path: Path) -> None:
    key = issue_key(path, "ks.amr")
    other = issue_key(path, "ks.finance")
    assert authenticate(path, f"Bearer {key}") == "ks.amr"
    assert authenticate(path, f"bearer {other}") == "ks.finance"
    listed = {k["key_id"]: k["department"] for k in list_keys(path)}
    assert listed == {key.split(".")[0]: "ks.amr", other.split(".")[0]: "ks.finance"}


def test_the_file_holds_no_secret(path: Path) -> None:
    key = issue_key(path, "ks.amr")
    key_id, secret = key.split(".", 1)
    text = path.read_text()
    assert secret not in text
    stored = json.loads(text)[key_id]
    assert set(stored) == {"department", "salt", "hash", "created_at"}
    assert stored["department"] == "ks.amr"
    assert path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwdw==",
        "Bearer gk_0000000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Bearer not-a-key",
    ],
)
def test_missing_malformed_or_unknown_keys_are_refused(path: Path, header: str | None) -> None:
    issue_key(path, "ks.amr")
    assert authenticate(path, header) is None


def test_a_wrong_secret_is_refused(path: Path) -> None:
    key = issue_key(path, "ks.amr")
    key_id, secret = key.split(".", 1)
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert authenticate(path, f"Bearer {key_id}.{wrong}") is None
    # another key's secret under this id does not work either
    other_secret = issue_key(path, "ks.amr").split(".", 1)[1]
    assert authenticate(path, f"Bearer {key_id}.{other_secret}") is None


def test_a_revoked_key_stops_working(path: Path) -> None:
    key = issue_key(path, "ks.amr")
    keep = issue_key(path, "ks.amr")
    key_id = key.split(".", 1)[0]
    assert revoke_key(path, key_id) is True
    assert authenticate(path, f"Bearer {key}") is None
    assert authenticate(path, f"Bearer {keep}") == "ks.amr"
    assert revoke_key(path, key_id) is False
    assert key_id not in {k["key_id"] for k in list_keys(path)}


def test_an_unknown_department_gets_no_key(path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"ks\.nowhere"):
        issue_key(path, "ks.nowhere")
    assert not path.exists()


def test_no_key_file_means_nobody_is_authenticated(path: Path) -> None:
    assert authenticate(path, "Bearer gk_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAA") is None

"""Gateway API keys: one or more per department, stored only as salted hashes.

A key is ``<key_id>.<secret>``. The id is public (it is how a key is found, listed and
revoked); the secret is 256 random bits, shown once by ``issue_key`` and never stored. The
file (``<data_dir>/gateway-keys.json``) maps each id to its department, a per-key salt and
``sha256(salt || secret)``. A fast hash is enough here, unlike for passwords: a 256-bit random
secret cannot be guessed by brute force, and a slow hash would cost every request. Secrets
are compared with ``hmac.compare_digest`` so timing reveals nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bus.domain.departments import Directory
from bus.errors import ConfigurationError

KEYS_FILE = "gateway-keys.json"
_KEY_ID = re.compile(r"^gk_[0-9a-f]{16}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


def keys_path(data_dir: Path) -> Path:
    """Where the gateway keeps its key hashes."""
    return data_dir / KEYS_FILE


def _hash(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read gateway key file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"gateway key file {path} must hold a JSON object")
    return raw


_cache: dict[Path, tuple[tuple[int, int, int], dict[str, dict[str, Any]]]] = {}


def _read_cached(path: Path) -> dict[str, dict[str, Any]]:
    """``_read``, re-read only when the file changed: every request authenticates.

    A ``stat`` per request still sees a key issued or revoked a moment ago.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    data = _read(path)
    _cache[path] = (stamp, data)
    return data


def _write(path: Path, data: dict[str, dict[str, Any]]) -> None:
    """Replace the file atomically, readable by its owner only (it holds hashes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the key file between concurrent CLI runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def issue_key(path: Path, department: str, directory: Directory | None = None) -> str:
    """Make a key for ``department`` and return it; this is the only time it is visible."""
    directory = directory or Directory.load()
    if directory.get(department) is None:
        raise ConfigurationError(
            f"department {department!r} is not in the department directory",
            reason="auth.unknown_source",
        )
    if department in directory.policy.reserved:
        raise ConfigurationError(
            f"{department} is the bus's own identity (reserved in the policy): no key is "
            "issued for it",
            reason="auth.reserved_source",
        )
    key_id = f"gk_{secrets.token_hex(8)}"
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    with _locked(path):
        data = _read(path)
        data[key_id] = {
            "department": department,
            "salt": salt.hex(),
            "hash": _hash(salt, secret),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write(path, data)
    return f"{key_id}.{secret}"


def revoke_key(path: Path, key_id: str) -> bool:
    """Remove a key; True if it existed. Takes effect on the gateway's next request."""
    with _locked(path):
        data = _read(path)
        if data.pop(key_id, None) is None:
            return False
        _write(path, data)
    return True


def list_keys(path: Path) -> list[dict[str, str]]:
    """Key ids with their department and creation time (never salts or hashes)."""
    return [
        {"key_id": k, "department": v.get("department", ""), "created_at": v.get("created_at", "")}
        for k, v in sorted(_read(path).items())
    ]


def authenticate(path: Path, header: str | None) -> str | None:
    """The department an ``Authorization: Bearer <key>`` header proves, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    key_id, dot, secret = token.strip().partition(".")
    if not dot or not _KEY_ID.match(key_id) or not _SECRET.match(secret):
        return None
    entry = _read_cached(path).get(key_id)
    if not isinstance(entry, dict):
        return None
    try:
        salt = bytes.fromhex(str(entry["salt"]))
        expected = str(entry["hash"])
        department = str(entry["department"])
    except (KeyError, ValueError):
        return None
    if not hmac.compare_digest(_hash(salt, secret), expected):
        return None
    return department


__all__ = ["KEYS_FILE", "authenticate", "issue_key", "keys_path", "list_keys", "revoke_key"]

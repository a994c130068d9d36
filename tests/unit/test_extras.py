"""The SDK installs without the extras: what each role adds is only imported by that role.

Each check runs in a fresh interpreter whose import system refuses the extras' packages, as
an install of ``collaboration-bus`` without extras would (``ModuleNotFoundError``), and the
packaging metadata is checked to list those packages only under their extras.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import pytest

from bus.cli import EXTRAS

BLOCKER = """
import sys

EXTRAS = {extras!r}

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NotInstalled())
"""


def slim(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` where none of the extras' packages can be imported."""
    program = BLOCKER.format(extras=sorted(EXTRAS)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=120
    )


def bus(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``bus`` command, slim."""
    return slim("import sys\nfrom bus.cli import main\nsys.argv[0] = 'bus'\nmain()\n", *args)


def test_the_extras_packages_are_not_in_the_base_requirements() -> None:
    requires = importlib.metadata.requires("collaboration-bus") or []
    base = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
            for r in requires if "extra ==" not in r}  # fmt: skip
    assert base.isdisjoint({"faust-streaming", "fastapi", "uvicorn", "psycopg",
                            "chinese-calendar", "lunar-python"}), base  # fmt: skip
    for extra in ("worker", "gateway", "outbox", "contract", "all"):
        assert any(f'extra == "{extra}"' in r for r in requires), f"no [{extra}] extra"


def test_the_sdk_imports_and_verifies_a_webhook_without_any_extra() -> None:
    done = slim("""
        import bus, bus.streaming.client, bus.domain.certificates
        import connectors.base, connectors.file_import
        from connectors.webhook import verify_webhook
        from standardwebhooks.webhooks import Webhook

        body = b'{"department":"ks.tax","deliveries":[]}'
        secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGhlLXRlc3Qh"
        ts = __import__("time").time()
        import datetime
        sig = Webhook(secret).sign("msg_1", datetime.datetime.fromtimestamp(ts, datetime.UTC), body)
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(ts)),
                   "webhook-signature": sig}
        print(verify_webhook(headers, body, secret=secret)["department"])
        for heavy in ("faust", "fastapi", "psycopg", "chinese_calendar"):
            assert heavy not in sys.modules, heavy
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ks.tax"


def test_the_cli_runs_without_extras_and_names_the_one_a_command_needs() -> None:
    helped = bus("--help")
    assert helped.returncode == 0, helped.stderr
    assert "worker" in helped.stdout
    for args, extra in (
        (("worker",), "worker"),
        (("gateway", "run"), "gateway"),
    ):
        done = bus(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"pip install 'collaboration-bus[{extra}]'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("module", ["bus.edge.gateway.app", "bus.agents.app", "connectors.outbox"])
def test_each_role_still_says_what_it_misses(module: str) -> None:
    done = slim(f"import {module}")
    assert done.returncode != 0
    assert "ModuleNotFoundError" in done.stderr

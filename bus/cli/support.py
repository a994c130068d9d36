"""What every ``bus`` command shares: settings read once, with errors people can act on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Column, Table

from bus.settings import Settings, invalid_settings
from bus.streaming.client import kafka_admin

err = Console(stderr=True)

BrokerOpt = Annotated[
    str | None, typer.Option("--broker", "-b", help="Kafka bootstrap, overrides BUS_BROKER.")
]

TzOpt = Annotated[
    str | None,
    typer.Option(
        "--tz",
        help="Show times in this zone, e.g. Asia/Shanghai or UTC; default: this machine's "
        "(the TZ variable).",
    ),
]


def load_settings(**values: Any) -> Settings:
    """``Settings`` from the environment (and ``values``); exit 2 naming each wrong variable."""
    try:
        return Settings(**values)
    except ValueError as exc:
        err.print(f"[red]invalid settings:[/]\n{invalid_settings(exc)}", highlight=False)
        raise typer.Exit(2) from None


#: Widths of what people copy from a table into the next command.
UUID_WIDTH, USCC_WIDTH, SERIAL_WIDTH, TASK_ID_WIDTH = 36, 18, 20, 21


def copyable(header: str, width: int) -> Column:
    """A column of ids, serials or USCCs: kept whole on one line even on a narrow terminal."""
    return Column(header, no_wrap=True, min_width=width, overflow="fold")


def whole_table(*columns: str | Column, **options: Any) -> Table:
    """A table that never cuts a value short: a long word folds onto the next line instead
    of ending in an ellipsis (an 80-column terminal cut every task id and serial)."""
    cols = [c if isinstance(c, Column) else Column(c, overflow="fold") for c in columns]
    return Table(*cols, **options)


def need_topics(settings: Settings, also: Iterable[str] = ()) -> None:
    """Exit 2 when the broker lacks the bus's topics (or ``also``), saying what to run.

    A consumer of a missing topic does not fail: aiokafka warns on every metadata refresh
    until the read times out (`bus tasks` printed millions of lines in 40 s before this).
    """
    from bus.streaming.topics import missing_topics

    async def existing() -> set[str] | None:
        admin = kafka_admin(settings)
        await admin.start()  # no broker at all: raised, and the entry point says so
        try:
            return set(await admin.list_topics())
        except KafkaError:  # e.g. the node asked is down: the command's own clients ride it out
            return None
        finally:
            await admin.close()

    have = asyncio.run(existing())
    if have is None:
        return
    if missing := missing_topics(settings, have, also):
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        err.print(
            f"[red]error:[/] the broker at {settings.broker} has no topic "
            f"{', '.join(missing[:3])}{more}. Create the bus's topics: `bus topics create`.",
            soft_wrap=True,
        )
        raise typer.Exit(2)


def time_zone(name: str | None) -> tuple[tzinfo, str]:
    """The zone to show times in, and its name for a column header; exit 2 on a wrong name.

    Operators read times on their own clock: the bus stores UTC, but "09:30" in a trace
    should be the office's 09:30. The header names the zone so nobody has to guess.
    """
    if name is None:
        local = datetime.now().astimezone()
        assert local.tzinfo is not None
        return local.tzinfo, _label(local)
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        err.print(f"[red]--tz {name!r}:[/] not a time zone; use e.g. Asia/Shanghai or UTC")
        raise typer.Exit(2) from None
    return zone, _label(datetime.now(zone), name)


def _label(moment: datetime, key: str | None = None) -> str:
    """``UTC``, ``Asia/Shanghai, UTC+08:00`` or ``CST, UTC+08:00``."""
    offset = moment.strftime("%z")
    if offset == "+0000" and key in (None, "UTC"):
        return "UTC"
    return f"{key or moment.tzname()}, UTC{offset[:3]}:{offset[3:]}"


def local_time(moment: datetime, zone: tzinfo, *, ms: bool = False) -> str:
    """``moment`` on the zone's clock, to the second (or millisecond)."""
    text = f"{moment.astimezone(zone):%Y-%m-%d %H:%M:%S.%f}"
    return text[:-3] if ms else text[:-7]

"""``bus gateway``: run the HTTP gateway and manage its API keys.

Keys are managed on the gateway's host with the same ``BUS_*`` settings (``BUS_DATA_DIR``
says where the key file is); a running gateway sees a new or revoked key on its next request.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bus.cli.support import load_settings
from bus.errors import BusError
from bus.settings import Settings

gateway_app = typer.Typer(
    help="The HTTP gateway for department systems that cannot speak Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Issue, revoke and list gateway API keys.", no_args_is_help=True)
gateway_app.add_typer(keys_app, name="keys")


def _settings() -> Settings:
    return load_settings()


@gateway_app.command()
def run(
    host: Annotated[
        str, typer.Option(help="Address to listen on; loopback unless you mean it.")
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8080,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the gateway (OpenAPI docs at /docs) until interrupted."""
    import uvicorn

    from bus.edge.gateway.app import create_app

    app = create_app(_settings())
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@keys_app.command("issue")
def keys_issue(
    department: Annotated[str, typer.Argument(help="Department code, e.g. ks.amr.")],
) -> None:
    """Make an API key for DEPARTMENT and print it: it is shown this once only."""
    from bus.domain.departments import Directory
    from bus.edge.gateway.keys import issue_key, keys_path

    s = _settings()
    try:
        key = issue_key(
            keys_path(s.data_dir), department, Directory.load(s.departments_file, s.policy_file)
        )
    except BusError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(key)
    typer.echo(
        f"key {key.split('.', 1)[0]} for {department}: store it now, it is not kept", err=True
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (before the dot).")],
) -> None:
    """Revoke a key; requests with it fail from now on."""
    from bus.edge.gateway.keys import keys_path, revoke_key

    if not revoke_key(keys_path(_settings().data_dir), key_id.split(".", 1)[0]):
        typer.echo(f"error: no key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def keys_list() -> None:
    """List key ids with their department and creation time (never the secrets)."""
    from bus.edge.gateway.keys import keys_path, list_keys

    for k in list_keys(keys_path(_settings().data_dir)):
        typer.echo(f"{k['key_id']}\t{k['department']}\t{k['created_at']}")


if __name__ == "__main__":
    gateway_app()

"""The ``openflr`` command: serve restore points, manage users."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import re
import secrets
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from openflr import __version__

log = logging.getLogger(__name__)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="openflr: file-level restore from machine backups.",
)
user_app = typer.Typer(no_args_is_help=True, help="Manage the users who may log on.")
app.add_typer(user_app, name="user")

SAMPLE_REPOSITORY = Path(__file__).parent / "sample_repository"
INITIAL_USER = "restore"
_INITIAL_PASSWORD_FILE = "initial-password"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openflr"


DEFAULT_DATA_DIR = _default_data_dir()

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="OPENFLR_DATA_DIR",
        help="Folder for the database, certificate and logs.",
    ),
]


def _services(
    data_dir: Path,
    repositories: list[Path],
    timeout: float = 900.0,
    secure: bool = True,
    public_url: str | None = None,
    flr_root: Path | None = None,
    flr_allow_other: bool = False,
    logon_backoff_cap: float = 30.0,
    keep_open: float = 60.0,
) -> object:
    from openflr.services import Services, Settings

    return Services.build(
        Settings(
            data_dir=data_dir,
            repositories=repositories,
            session_timeout=timeout,
            secure_cookies=secure,
            public_url=public_url,
            flr_root=flr_root,
            flr_allow_other=flr_allow_other,
            logon_backoff_cap=logon_backoff_cap,
            keep_open=keep_open,
        )
    )


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The account name (log on as NAME, .\\NAME, ...).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="PortalAdministrator (sees every machine), RestoreOperator "
            "or PortalUser (see only their --scope). Default for a new user: "
            "PortalAdministrator; an existing user keeps theirs.",
        ),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="A machine name or glob pattern (web-*) the user may "
            "restore from; repeat for several. Replaces the user's scope.",
        ),
    ] = None,
    allow_ext: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-ext",
            help="Only files with this extension may be downloaded "
            "(.docx); repeat for several; --allow-ext '' clears the list.",
        ),
    ] = None,
    deny_ext: Annotated[
        list[str] | None,
        typer.Option(
            "--deny-ext",
            help="Files with this extension may not be downloaded "
            "(.exe); repeat for several; --deny-ext '' clears the list.",
        ),
    ] = None,
) -> None:
    """Create a user, or set a new password (and role, scope, extension rules) for one."""
    from openflr.services import Services

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    services = _services(data_dir, [])
    assert isinstance(services, Services)
    try:
        created = services.users.add(
            name,
            password,
            role=role,
            scope=scope,
            allowed_extensions=allow_ext,
            denied_extensions=deny_ext,
        )
    except ValueError as exc:
        typer.echo(f"openflr: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        services.db.close()
    if name == INITIAL_USER:
        # The generated password is no longer the one to use, so stop showing it.
        (data_dir / _INITIAL_PASSWORD_FILE).unlink(missing_ok=True)
    typer.echo(f"user {name} {'created' if created else 'updated'}")


@app.command()
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    repository: Annotated[
        list[Path] | None,
        typer.Option(
            "--repository",
            help="A folder of backups; repeat for several. "
            "Default: the sample repository shipped with openflr.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port (default 9398 with TLS, 9399 with --http).")
    ] = None,
    http: Annotated[bool, typer.Option("--http", help="Serve plain HTTP, without TLS.")] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key")] = None,
    session_timeout: Annotated[
        float, typer.Option("--session-timeout", help="Idle seconds before a logon session ends.")
    ] = 900.0,
    logon_backoff_cap: Annotated[
        float,
        typer.Option(
            "--logon-backoff-cap",
            help="Longest wait, in seconds, that repeated "
            "failed logons impose on a user name or an address.",
        ),
    ] = 30.0,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            help="Base URL for every Href (e.g. https://flr.example:9398)"
            "; default: the scheme and Host header of each request.",
        ),
    ] = None,
    flr_root: Annotated[
        Path | None,
        typer.Option(
            "--flr-root",
            help="Folder where each mount also appears as a read-only folder (FUSE). "
            "Default: flr inside the data folder.",
        ),
    ] = None,
    flr_allow_other: Annotated[
        bool,
        typer.Option(
            "--flr-allow-other",
            help="Let every local user read the FLR folders, not only the server's own user.",
        ),
    ] = False,
    keep_open: Annotated[
        float,
        typer.Option(
            "--keep-open",
            help="Seconds a restore point stays open after its last unmount, so that the next "
            "mount of it is quick; 0 closes it at once.",
        ),
    ] = 60.0,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Serve the Enterprise Manager REST API over the repositories."""
    import uvicorn

    from openflr.api.app import create_app
    from openflr.api.zerocopy import ZeroCopySend
    from openflr.services import Services

    _configure_logging(log_level)
    # Absolute from here on: libfuse changes the process's folder to / when it mounts the first
    # FLR folder, and a relative path (./openflr-data, as scripts/serve gives) would then name
    # another folder: the audit lines went to /openflr-data.
    data_dir = data_dir.absolute()
    flr_root = flr_root.absolute() if flr_root is not None else None
    repositories = [folder.absolute() for folder in repository or [SAMPLE_REPOSITORY]]
    for folder in repositories:
        if not folder.is_dir():
            typer.echo(f"openflr: repository {folder} is not a folder", err=True)
            raise typer.Exit(2)
    if session_timeout <= 0:
        typer.echo("openflr: --session-timeout must be more than 0", err=True)
        raise typer.Exit(2)
    if not keep_open >= 0:  # NaN too
        typer.echo("openflr: --keep-open must be 0 or more", err=True)
        raise typer.Exit(2)

    if public_url is not None and not re.match(r"^https?://[^/\s]+/?$", public_url):
        typer.echo("openflr: --public-url must look like https://host:port", err=True)
        raise typer.Exit(2)
    services = _services(
        data_dir,
        repositories,
        session_timeout,
        secure=not http,
        public_url=public_url,
        flr_root=flr_root,
        flr_allow_other=flr_allow_other,
        logon_backoff_cap=logon_backoff_cap,
        keep_open=keep_open,
    )
    assert isinstance(services, Services)
    user_line = _ensure_initial_user(services, data_dir)

    ssl: dict[str, str] = {}
    if not http:
        from openflr.tls import ensure_self_signed

        if (tls_cert is None) != (tls_key is None):
            typer.echo("openflr: give both --tls-cert and --tls-key, or neither", err=True)
            raise typer.Exit(2)
        cert, key = (
            (tls_cert, tls_key) if tls_cert and tls_key else ensure_self_signed(data_dir, host)
        )
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    elif not is_loopback(host):
        log.warning(
            "serving plain HTTP on %s: logon passwords and files cross the network "
            "unencrypted; use TLS outside loopback",
            host,
        )

    port = port or (9399 if http else 9398)
    scheme = "http" if http else "https"
    shown_host = f"[{host}]" if ":" in host else host
    typer.echo(
        f"openflr {__version__} serving {len(repositories)} repository folder(s): "
        + ", ".join(str(r) for r in repositories)
    )
    typer.echo(f"  API:  {scheme}://{shown_host}:{port}/api/")
    if user_line:
        typer.echo(user_line)

    class _StoppingServer(uvicorn.Server):
        """uvicorn's server, which also sets ``stopping`` as soon as it is asked to stop."""

        def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
            super().__init__(config)
            self._stopping = stopping

        def handle_exit(self, sig: int, frame: Any) -> None:
            self._stopping.set()
            super().handle_exit(sig, frame)

    services.start()
    # Outside every other layer: zero-copy sends need the server's own connection.
    application = ZeroCopySend(create_app(services, on_shutdown=services.stop))
    # The objects made so far (modules, classes, the services) live as long as the process;
    # out of the collector's sight, its full passes scan a fifth of the objects and pause a
    # request for about 15 ms instead of 60.
    gc.collect()
    gc.freeze()
    try:
        config = uvicorn.Config(
            application,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            # Clients poll tasks and page listings with pauses; a short keep-alive makes the
            # server close connections just as a client reuses them ("connection reset").
            timeout_keep_alive=75,
            # A download whose client stopped reading must not hold a shutdown up for long.
            timeout_graceful_shutdown=10,
            # Let headers up to 256 KiB reach openflr, which answers over 16 KiB with a 431 in
            # the API's Error shape instead of the HTTP layer's bare 400.
            h11_max_incomplete_event_size=256 * 1024,
            **ssl,  # type: ignore[arg-type]
        )
        _StoppingServer(config, services.stopping).run()
    finally:
        services.stop()


def _command() -> str:
    """How this command was started (``.venv/bin/openflr``), so that hints can be pasted."""
    started = Path(sys.argv[0])
    if started.name == "openflr" and started.parent != Path():
        return str(started)
    return "openflr"


def is_loopback(host: str) -> bool:
    """Whether a listening address keeps traffic on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ensure_initial_user(services: object, data_dir: Path) -> str | None:
    """On a server with no users, make one with a random password and say how to log on."""
    from openflr.services import Services

    assert isinstance(services, Services)
    password_file = data_dir / _INITIAL_PASSWORD_FILE
    if services.users.count() == 0:
        password = secrets.token_urlsafe(12)
        services.users.add(INITIAL_USER, password)
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as fh:
            fh.write(password + "\n")
    if password_file.is_file():
        password = password_file.read_text().strip()
        return (
            f"  User: {INITIAL_USER}   Password: {password}\n"
            f"  (change it with: {_command()} user add {INITIAL_USER} --data-dir {data_dir} "
            "--password-stdin)"
        )
    return None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("dissect", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def audit(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the last N events.")] = None,
) -> None:
    """Print the audit log: logons (and failed ones), logoffs, mounts, restores, downloads."""
    import dataclasses
    import json

    from openflr.services import Services

    services = _services(data_dir, [])
    assert isinstance(services, Services)
    try:
        for event in services.audit.events(limit=limit):
            if as_json:
                typer.echo(json.dumps(dataclasses.asdict(event), ensure_ascii=True))
                continue
            fields = [
                event.time,
                event.event,
                f"user={event.user or '-'}",
                f"address={event.address or '-'}",
            ]
            if event.restore_point_name:
                fields.append(f"point={event.restore_point_name!r}")
            if event.guest_path:
                fields.append(f"path={event.guest_path!r}")
            if event.bytes_sent is not None:
                fields.append(f"bytes={event.bytes_sent}")
            if event.outcome:
                fields.append(f"outcome={event.outcome!r}")
            typer.echo(" ".join(fields))
    finally:
        services.db.close()


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``openflr`` command."""
    app()

"""The `audience-pipeline` command: the click group and its options.

Each command's body lives in a module of this package (`demo`, `dev`, `hash_files`, `login`,
`status`), imported when the command runs, so that a command that does not need Dagster starts without
loading it. The command functions here end in `_command` so that they never shadow those modules.
"""

import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import click
import duckdb

from audience_pipeline.sample_data import write_sample_data

_profiles = click.option(
    "--profiles",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Synthetic profiles to generate.",
)


@click.group()
def main() -> None:
    """Activate first-party audiences into Amazon, with Dagster."""


@main.command("sample-data")
@_profiles
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Folder to write sample.duckdb into.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def sample_data_command(profiles: int, out: Path, seed: int) -> None:
    """Write a synthetic source database: profiles, events and purchases."""
    path = write_sample_data(out, profiles=profiles, seed=seed)
    click.echo(str(path))
    for table, rows in table_row_counts(path).items():
        click.echo(f"  {table}: {rows:,} rows")


@main.command("demo")
@_profiles
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of a summary.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_workdir"),
    show_default=True,
    help="Folder for the sample data and the pipeline's state.",
)
def demo_command(profiles: int, as_json: bool, workdir: Path) -> None:
    """Run the whole pipeline on sample data and report what it did."""
    # Imported here so that the commands that do not run Dagster start without loading it.
    from audience_pipeline.cli.demo import DemoError, format_report, run_demo
    from audience_pipeline.components.setting_errors import SettingError

    def progress(line: str) -> None:
        click.echo(line, err=True)

    # Whatever a library prints while the pipeline runs belongs with the logs on stderr, so that
    # stdout carries the report alone.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = run_demo(workdir, profiles=profiles, progress=progress)
    except (DemoError, SettingError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(report) if as_json else format_report(report))


@main.command("dev")
@_profiles
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for the sample data, the pipeline's state, the sandbox's records and Dagster's runs.",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=3000, show_default=True, help="Dagster UI port."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the Dagster UI listens on.")
def dev_command(profiles: int, workdir: Path, port: int, host: str) -> None:
    """Run the example project in the Dagster UI against a sandbox, until Ctrl-C.

    Writes sample data unless WORKDIR has some, starts the sandbox, and runs `dg dev` with the
    sandbox's environment; prints the UI's address once it answers.
    """
    from audience_pipeline.cli.dev import port_in_use, run_dev
    from audience_pipeline.components.setting_errors import SettingError

    # Checked before anything starts, so that a busy port costs nothing and says what to change.
    if port_in_use(host, port):
        raise click.BadParameter(f"{host}:{port} is already in use; pick a free port.", param_hint="'--port'")
    try:
        code = run_dev(
            workdir,
            profiles,
            host,
            port,
            progress=lambda line: click.echo(line, err=True),
            ready=lambda url: click.echo(f"Dagster UI: {url}"),
        )
    except SettingError as error:
        raise click.ClickException(str(error)) from None
    sys.exit(code)


@main.command("hash")
@click.argument("source", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("target", metavar="OUTPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--country", help="Country for rows without a country_code column value (e.g. US).")
@click.option(
    "--fields",
    help="Comma-separated columns to normalize and hash [default: every hashable identity column "
    "present except country_code].",
)
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write rejected values here (.csv or .parquet): row number, field, reason; never the value.",
)
def hash_command(
    source: Path, target: Path, country: str | None, fields: str | None, rejects_path: Path | None
):
    """Normalize and SHA-256 hash the identity columns of INPUT (.parquet, .csv, .jsonl) into OUTPUT
    (.parquet, .csv), keeping every row and column in order."""
    from audience_pipeline.cli.hash_files import HashFileError, hash_file

    chosen = [f.strip() for f in fields.split(",") if f.strip()] if fields is not None else None
    try:
        summary = hash_file(source, target, country=country, fields=chosen, rejects_path=rejects_path)
    except HashFileError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"{summary.rows:,} rows, fields {', '.join(summary.fields) or 'none'} -> {target} "
        f"in {summary.seconds:.1f} s",
        err=True,
    )
    for field in summary.fields:
        click.echo(f"  {field:<14} {summary.values_out[field]:>10,} values", err=True)
    total = sum(summary.rejects.values())
    click.echo(f"rejects: {total:,}", err=True)
    for (field, reason), n in sorted(summary.rejects.items()):
        click.echo(f"  {field:<14} {reason:<26} {n:>10,}", err=True)


@main.command("sandbox")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it on loopback)."
)
@click.option(
    "--ads-port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 picks a free port."
)
@click.option(
    "--aws-port", type=click.IntRange(0, 65535), default=8766, show_default=True, help="0 picks a free port."
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the Amazon Ads API emulator's records here across restarts [default: in memory].",
)
def sandbox_command(host: str, ads_port: int, aws_port: int, state_dir: Path | None) -> None:
    """Run the local Amazon Ads API and AWS (S3, Firehose) until interrupted, and print their environment."""
    from audience_pipeline.sandbox.config import SandboxConfig
    from audience_pipeline.sandbox.server import start_sandbox

    # Ctrl-C and SIGTERM (a process manager) both end the sandbox, even where the shell that started
    # us in the background left SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    running = start_sandbox(host, ads_port, aws_port, SandboxConfig(state_dir=state_dir))
    # From here an interrupt at any moment, even mid-print, stops both servers cleanly.
    try:
        click.echo("# Sandbox ready. Point the pipeline at it with:")
        for name, value in running.env().items():
            click.echo(f"export {name}={value}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("# Sandbox stopped.", err=True)
    finally:
        running.stop()


@main.command("login")
@click.option(
    "--region",
    type=click.Choice(["NA", "EU", "FE"]),
    default="NA",
    envvar="AMAZON_ADS_REGION",
    show_envvar=True,
    show_default=True,
    help="Login with Amazon and Amazon Ads API region.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8767,
    show_default=True,
    help="Loopback port of the redirect URI http://127.0.0.1:PORT/callback (0 picks a free one).",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".env"),
    show_default=True,
    help="File to save AMAZON_ADS_REFRESH_TOKEN in (and to read the client id and secret from).",
)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Seconds to wait for the browser to come back.",
)
@click.option("--no-browser", is_flag=True, help="Only print the sign-in address; open no browser.")
def login_command(region: str, port: int, env_file: Path, timeout: int, no_browser: bool) -> None:
    """Sign in with Login with Amazon and save a refresh token for the pipeline.

    Takes AMAZON_ADS_CLIENT_ID and AMAZON_ADS_CLIENT_SECRET from the environment or ENV_FILE, sends you
    to Amazon's consent page, saves the refresh token to ENV_FILE (mode 0600, never printed), then lists
    the profiles, manager accounts and AMC instances it reaches.
    """
    from audience_pipeline.cli.login import LoginError, login_app
    from audience_pipeline.cli.login import login as run_login

    try:
        app = login_app(region, env_file)
        run_login(app, env_file, port=port, timeout=timeout, open_browser=not no_browser, echo=click.echo)
    except LoginError as error:
        raise click.ClickException(str(error)) from None


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of a table.")
@click.option(
    "--dagster-home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DAGSTER_HOME",
    show_envvar=True,
    required=True,
    help="The Dagster home of the instance the pipeline runs with (`dev`: <workdir>/.dagster_home).",
)
@click.option(
    "--state",
    envvar="AUDIENCE_PIPELINE_STATE",
    show_envvar=True,
    help="The state store: a folder or s3://bucket/prefix (`dev`: <workdir>/state) "
    "[default: .audience_state].",
)
@click.option(
    "--project",
    type=click.Path(exists=True, path_type=Path),
    help="A folder of the dg project declaring the audiences and destinations [default: this package's].",
)
def status_command(as_json: bool, dagster_home: Path, state: str | None, project: Path | None) -> None:
    """Show every audience at every destination: members delivered, pending, rejected, the last delivery,
    the match rate and where the work stands.

    Reads the Dagster instance and the state store only; counts and states, never a member.
    """
    from audience_pipeline.activation_status import text_table
    from audience_pipeline.cli.status import (
        DEFAULT_PROJECT,
        StatusError,
        project_targets,
        read_project_status,
        status_json,
    )

    now = time.time()
    try:
        targets = project_targets(project or DEFAULT_PROJECT)
        rows = read_project_status(dagster_home, state, targets, now)
    except StatusError as error:
        raise click.ClickException(str(error)) from None
    click.echo(status_json(rows, now) if as_json else text_table(rows))


def table_row_counts(path: Path) -> dict[str, int]:
    """Rows in each table of a DuckDB file, read-only."""
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = [
            name for (name,) in conn.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
        ]
        return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables}

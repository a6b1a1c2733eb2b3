"""`audience-pipeline dev`: the example project in the Dagster UI, against a sandbox, in one command.

In a working folder it keeps everything a restart should find again: the sample data
(`data/sample.duckdb`), the delivery state (`state/`), the sandbox's Amazon Ads API records
(`.sandbox/`), the ledger key (`.ledger_key`) and the Dagster instance with its runs (`.dagster_home/`).
The sandbox runs in this process; `dagster dev` runs in its own process group with the sandbox's
environment, so that stopping the group stops the webserver, the daemon, the code servers and any
run they launched.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import boto3
import requests
from cryptography.fernet import Fernet

import audience_pipeline
from audience_pipeline.membership.payload_crypto import LEDGER_KEY_ENV_VAR
from audience_pipeline.resources.amazon_ads import (
    API_URL_ENV_VAR,
    CLIENT_ID_ENV_VAR,
    CLIENT_SECRET_ENV_VAR,
    REFRESH_TOKEN_ENV_VAR,
    TOKEN_URL_ENV_VAR,
)
from audience_pipeline.resources.duckdb_source import SOURCE_ENV_VAR
from audience_pipeline.resources.state_store import STATE_ENV_VAR
from audience_pipeline.sample_data import write_sample_data
from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.server import RunningSandbox, start_sandbox

# Printed with their values: where things are, never credentials. Every other variable set for
# `dagster dev` is printed by name only.
_SHOWN_VALUES = frozenset(
    {
        API_URL_ENV_VAR,
        TOKEN_URL_ENV_VAR,
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        SOURCE_ENV_VAR,
        STATE_ENV_VAR,
        "DAGSTER_HOME",
    }
)
# dagster dev waits up to a minute for each of its services; a shutdown that takes longer than this
# is stuck, and the rest of the process group is killed.
_STOP_TIMEOUT_SECONDS = 20
_DEFINITIONS_MODULE = f"{audience_pipeline.__name__}.definitions"


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The webserver binds with SO_REUSEADDR too: connections of an earlier run still in TIME_WAIT
        # would not stop it, so they must not count as "in use" here.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def run_dev(
    workdir: Path,
    profiles: int,
    host: str,
    port: int,
    progress: Callable[[str], None],
    ready: Callable[[str], None],
) -> int:
    """Sample data, a sandbox and `dagster dev` on `host:port`, until SIGINT or SIGTERM (then 0) or until
    it ends on its own (then its exit code). `progress` receives one line per step, `ready` the
    UI's address once the webserver answers. Everything started here is stopped before returning."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # One access-log line per API call would bury Dagster's own logs.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    interrupts = _Interrupts()
    sandbox: RunningSandbox | None = None
    child: subprocess.Popen | None = None
    try:
        source = _sample_data(workdir, profiles, progress)
        sandbox = start_sandbox(config=SandboxConfig(state_dir=workdir / ".sandbox"))
        provision_example(sandbox)
        progress(f"sandbox: Amazon Ads API {sandbox.ads_url}, AWS {sandbox.aws_url}")
        project = project_root()
        env = _environment(workdir, sandbox, source, project, progress)
        progress("environment for Dagster (secret values not shown):")
        for name, value in env.items():
            progress(f"  {name}={value}" if name in _SHOWN_VALUES else f"  {name}")
        # Run in the Dagster home, from a workspace file: `dg dev` always works in the project folder,
        # and `dagster dev` warns that the dagster.yaml it finds there goes unused whenever DAGSTER_HOME
        # is another folder (the home holds a copy of it).
        cwd = Path(env.get("DAGSTER_HOME") or os.environ["DAGSTER_HOME"])
        command = _dagster_dev_command(_workspace_file(workdir, project), host, port)
        progress(f"starting: {' '.join(command)} (in {cwd})")
        # Held back until `child` is assigned, so that an interrupt cannot leave it unknown and running.
        with interrupts.deferred():
            child = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, start_new_session=True)
        # A browser cannot open the wildcard address; loopback reaches a server listening on it.
        url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        if _wait_for_webserver(child, url):
            ready(url)
            child.wait()
        if child.returncode >= 0:
            progress(f"Dagster exited with code {child.returncode}")
            return child.returncode
        # Popen reports a process killed by signal N as -N; shells report 128 + N.
        progress(f"Dagster was killed by signal {-child.returncode}")
        return 128 - child.returncode
    except KeyboardInterrupt:
        progress("stopping...")
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        interrupts.ignore()
        if child is not None:
            _stop_group(child)
            progress("Dagster stopped")
        if sandbox is not None:
            sandbox.stop()
            progress("sandbox stopped")


def project_root() -> Path | None:
    """The dg project folder this package is run from (a checkout or an editable install): the one
    whose pyproject.toml names the package as its root module. None for an installed wheel."""
    folder = Path(audience_pipeline.__file__).resolve().parent.parent
    return folder if _project_settings(folder).get("root_module") == audience_pipeline.__name__ else None


def _project_settings(folder: Path) -> dict:
    """`[tool.dg.project]` of the pyproject.toml in `folder`; empty when there is none."""
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    return tomllib.loads(pyproject.read_text()).get("tool", {}).get("dg", {}).get("project", {})


def _location_name(project: Path) -> str:
    """The project's code location name, as `dg` derives it."""
    return _project_settings(project).get("code_location_name") or project.name


def _sample_data(workdir: Path, profiles: int, progress: Callable[[str], None]) -> Path:
    """`<workdir>/data/sample.duckdb`, written unless it is there already."""
    path = workdir / "data" / "sample.duckdb"
    if path.exists():
        progress(f"sample data: reusing {path} (delete it to generate new data)")
        return path
    progress(f"sample data: writing {profiles:,} profiles to {path}")
    return write_sample_data(path.parent, profiles=profiles)


def provision_example(sandbox: RunningSandbox) -> None:
    """The Firehose streams and AMC buckets the project's destinations use, made in the sandbox."""
    # Imported here: finding the components loads Dagster and the project's definitions.
    from audience_pipeline.components.amc import AmazonMarketingCloudComponent
    from audience_pipeline.components.firehose import FirehoseComponent
    from audience_pipeline.definitions import project_components
    from audience_pipeline.sandbox.provision import provision_sandbox

    env = sandbox.env()
    session = boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    s3, firehose = (session.client(kind, endpoint_url=sandbox.aws_url) for kind in ("s3", "firehose"))
    provision_sandbox(
        s3, firehose, project_components(FirehoseComponent), project_components(AmazonMarketingCloudComponent)
    )


def _environment(
    workdir: Path,
    sandbox: RunningSandbox,
    source: Path,
    project: Path | None,
    progress: Callable[[str], None],
) -> dict[str, str]:
    """What `dagster dev` needs on top of this process's environment: the sandbox's endpoints, throwaway
    Login with Amazon credentials and the ledger key unless set, the sample data, a state folder, a
    Dagster instance in `workdir` unless DAGSTER_HOME is set, and the project's `.env` as `dg dev`
    would load it."""
    env = {**sandbox.env(), SOURCE_ENV_VAR: str(source), STATE_ENV_VAR: str(workdir / "state")}
    if project is not None:
        # How `dg dev` has Dagster load the project's `.env` into its code location.
        env["DAGSTER_PROJECT_ENV_FILE_PATHS"] = json.dumps({_location_name(project): str(project)})
    # The sandbox accepts any credentials; real ones someone set are kept.
    for name in (CLIENT_ID_ENV_VAR, CLIENT_SECRET_ENV_VAR, REFRESH_TOKEN_ENV_VAR):
        if not os.environ.get(name):
            env[name] = "sandbox"
    if not os.environ.get(LEDGER_KEY_ENV_VAR):
        env[LEDGER_KEY_ENV_VAR] = _ledger_key(workdir / ".ledger_key")
    if not os.environ.get("DAGSTER_HOME"):
        env["DAGSTER_HOME"] = str(_dagster_home(workdir / ".dagster_home", project, progress))
    return env


def _ledger_key(path: Path) -> str:
    """The Fernet key in `path`, made (readable by the owner only) if absent: the ledger of an earlier
    run can only be read with the key it was written with."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = Fernet.generate_key().decode()
    with os.fdopen(descriptor, "w") as file:
        file.write(key)
    return key


def _dagster_home(home: Path, project: Path | None, progress: Callable[[str], None]) -> Path:
    """A Dagster home that keeps runs across restarts, configured like the project's `dagster.yaml`
    (copied afresh each time, so edits there apply), or with telemetry off when there is none."""
    home.mkdir(parents=True, exist_ok=True)
    settings = project / "dagster.yaml" if project is not None else None
    if settings is not None and settings.is_file():
        shutil.copyfile(settings, home / "dagster.yaml")
        progress(f"Dagster instance: {home}, with the settings of {settings} (copied there)")
    else:
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def _workspace_file(workdir: Path, project: Path | None) -> Path:
    """`<workdir>/.dagster_workspace.yaml`, loading the package's definitions as `dg dev` loads them:
    in the project folder, under the project's code location name (without a project folder, an
    installed package, under the module's name)."""
    entry: dict[str, str] = {"module_name": _DEFINITIONS_MODULE}
    if project is not None:
        entry |= {"working_directory": str(project), "location_name": _location_name(project)}
    path = workdir / ".dagster_workspace.yaml"
    path.write_text(json.dumps({"load_from": [{"python_module": entry}]}, indent=2))  # JSON is YAML
    return path


def _dagster_dev_command(workspace: Path, host: str, port: int) -> list[str]:
    """`dg dev` on the workspace file, or `dagster dev` where dg is not installed."""
    dg = Path(sys.executable).parent / "dg"
    command = [str(dg), "dev"] if dg.is_file() else [sys.executable, "-m", "dagster", "dev"]
    return [*command, "--workspace", str(workspace), "--host", host, "--port", str(port)]


def _wait_for_webserver(child: subprocess.Popen, url: str) -> bool:
    """Wait until the webserver at `url` answers (True) or `child` ends (False)."""
    while child.poll() is None:
        try:
            requests.get(f"{url}/server_info", timeout=1).raise_for_status()
            return True
        except requests.RequestException:
            time.sleep(0.25)
    return False


def _stop_group(child: subprocess.Popen) -> None:
    """SIGTERM to `child`'s whole process group (dagster dev shuts its services down on it), then
    SIGKILL to whatever is left once `child` has ended or the timeout has passed."""
    # The group's id is the leader's pid; it exists as long as any member does, even after the leader.
    # ProcessLookupError: every member of the group has ended already.
    group = child.pid
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        child.wait(timeout=_STOP_TIMEOUT_SECONDS)
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    child.wait()


class _Interrupts:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so that Ctrl-C and a process manager both stop
    everything, even where the shell that started us in the background left SIGINT ignored."""

    def __init__(self) -> None:
        self._deferring = False
        self._pending = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self._deferring:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """An interrupt meanwhile is raised when the block ends."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending:
            raise KeyboardInterrupt

    def ignore(self) -> None:
        """From now on signals are ignored."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)

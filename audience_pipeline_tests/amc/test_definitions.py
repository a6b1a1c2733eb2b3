"""The AMC dataset definition model: seed 003's examples, FACT vs DIMENSION, and field-named errors."""

import json

import pytest

from audience_pipeline.amc.definitions import DatasetDefinition, InvalidDefinition

# Seed 003's two examples, verbatim.
SEED_DIMENSION = (
    '{ "dataSet": {"columns":[{"name": "product_asin","columnType": "DIMENSION","dataType": "STRING"},'
    '{"name": "product_sku","columnType": "METRIC","dataType": "STRING"}],'
    '"dataSetId": "mydemosimledimensionds","description": "my demo dimension dataset"}}'
)
SEED_FACT = (
    '{"dataSet": {"dataSetId": "mydemofactdswithidentity","columns": [{"columnType": "DIMENSION",'
    '"dataType": "STRING","externalUserIdType": {"hashedPii": "EMAIL"},"name": "email"},'
    '{"columnType": "DIMENSION","dataType": "DATE","isMainEventTime": true,"name": "record_date"},'
    '{"columnType": "DIMENSION","dataType": "STRING","name": "tcf_string","consentType": "TCF"}],'
    '"countryCode": "US"}}'
)


def _column(name: str, **overrides: object) -> dict:
    return {"name": name, "columnType": "DIMENSION", "dataType": "STRING", **overrides}


def _dataset(*columns: dict, **overrides: object) -> dict:
    return {"dataSetId": "ds", "columns": list(columns), **overrides}


def _error(definition: object) -> str:
    with pytest.raises(InvalidDefinition) as raised:
        DatasetDefinition.parse(definition)
    return str(raised.value)


@pytest.mark.parametrize("text", [SEED_DIMENSION, SEED_FACT])
def test_seed_examples_parse_and_round_trip(text: str) -> None:
    definition = DatasetDefinition.parse(text)
    body = definition.to_api()
    # to_api() spells out the nullable default; otherwise it is the seed's JSON.
    expected = json.loads(text)
    for column in expected["dataSet"]["columns"]:
        column["nullable"] = True
    assert body == expected
    assert DatasetDefinition.parse(body) == definition
    assert DatasetDefinition.parse(body["dataSet"]) == definition


def test_seed_fact_example() -> None:
    definition = DatasetDefinition.parse(SEED_FACT)
    assert definition.kind == "FACT"
    assert definition.main_event_time is not None and definition.main_event_time.name == "record_date"
    assert definition.hashed_pii_columns == {"email": "EMAIL"}
    assert definition.country_code == "US"
    assert definition.columns[2].consent_type == "TCF"


def test_seed_dimension_example() -> None:
    definition = DatasetDefinition.parse(SEED_DIMENSION)
    assert definition.kind == "DIMENSION"
    assert definition.main_event_time is None
    assert definition.hashed_pii_columns == {}
    assert definition.description == "my demo dimension dataset"


def test_is_nullable_is_accepted_as_nullable() -> None:
    definition = DatasetDefinition.parse(
        _dataset(_column("a", isNullable=False), _column("b", nullable=False))
    )
    assert [column.nullable for column in definition.columns] == [False, False]
    assert [column["nullable"] for column in definition.to_api()["dataSet"]["columns"]] == [False, False]


def test_external_identity_is_not_hashed_pii() -> None:
    definition = DatasetDefinition.parse(
        _dataset(_column("maid", externalUserIdType={"externalIdentity": "MAID"}))
    )
    assert definition.hashed_pii_columns == {}
    assert definition.to_api()["dataSet"]["columns"][0]["externalUserIdType"] == {"externalIdentity": "MAID"}


def test_fact_dataset_with_period() -> None:
    definition = DatasetDefinition.parse(
        _dataset(_column("t", dataType="TIMESTAMP", isMainEventTime=True), period="PT1H")
    )
    assert definition.kind == "FACT"
    assert definition.to_api()["dataSet"]["period"] == "PT1H"


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (_dataset(_column("a"), dataSetId="My-Set"), "dataSetId: String should match pattern"),
        (_dataset(_column("a"), countryCode="us"), "countryCode: String should match pattern"),
        (_dataset(), "columns: List should have at least 1 item"),
        (_dataset(*[_column(f"c{i}") for i in range(101)]), "columns: List should have at most 100 items"),
        (
            _dataset(_column("a"), _column("b"), _column("c"), _column("d", dataType="FLOAT")),
            "columns[3].dataType: ",
        ),
        (_dataset(_column("a", columnType="FACT")), "columns[0].columnType: "),
        (_dataset(_column(" ")), "columns[0].name: must not be blank"),
        (_dataset(_column("a", isNullable="no")), "columns[0].isNullable: Input should be a valid boolean"),
        (_dataset(_column("a", consentType="GDPR")), "columns[0].consentType: "),
        (
            _dataset(_column("a", externalUserIdType={"hashedPii": "SSN"})),
            "columns[0].externalUserIdType.hashedPii: ",
        ),
        (
            _dataset(_column("a", externalUserIdType={"hashedPii": "EMAIL", "externalIdentity": "MAID"})),
            "columns[0].externalUserIdType: give exactly one of hashedPii or externalIdentity",
        ),
        (
            _dataset(_column("a", dataType="LONG", externalUserIdType={"hashedPii": "PHONE"})),
            "columns[0]: a hashedPii column needs dataType STRING, not LONG",
        ),
        (
            _dataset(_column("a", isMainEventTime=True)),
            "columns[0]: isMainEventTime needs dataType TIMESTAMP or DATE, not STRING",
        ),
        (
            _dataset(_column("a", isMainEventtime=True)),
            "columns[0].isMainEventtime: Extra inputs are not permitted",
        ),
        (
            _dataset(_column("Email"), _column("email")),
            "columns: column names must be unique (ignoring case): email",
        ),
        (_dataset(_column("user_id")), "columns: user_id is reserved"),
        (
            _dataset(
                _column("t1", dataType="DATE", isMainEventTime=True),
                _column("t2", dataType="DATE", isMainEventTime=True),
            ),
            "columns: at most one column can be isMainEventTime, got t1, t2",
        ),
        (_dataset(_column("a"), period="P1D"), "dataSet: period is only allowed for a FACT dataset"),
        (
            _dataset(_column("t", dataType="DATE", isMainEventTime=True), period="P1W"),
            "period: Input should be",
        ),
        ("{not json", "dataset definition is not valid JSON"),
        ([], "dataSet: Input should be a valid dictionary"),
    ],
)
def test_invalid_definitions_name_the_field(definition: object, expected: str) -> None:
    assert expected in _error(definition)


def test_every_problem_is_reported() -> None:
    message = _error(_dataset(_column("a", dataType="FLOAT"), _column("b", columnType="X"), dataSetId="BAD"))
    assert "dataSetId: " in message
    assert "columns[0].dataType: " in message
    assert "columns[1].columnType: " in message

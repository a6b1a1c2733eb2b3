"""A typed AMC dataset definition: the JSON of seed 003 (and of `POST /dataSets`), validated client-side.

The checks mirror what AMC answers 400 for, so a bad `dataset_definition` setting fails at load time
with a message naming the offending field instead of a failed run after the query has been computed.
"""

import json
import re
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

ColumnType = Literal["DIMENSION", "METRIC"]
DataType = Literal["STRING", "DECIMAL", "INTEGER", "LONG", "TIMESTAMP", "DATE"]
HashedPiiType = Literal[
    "EMAIL", "PHONE", "FIRST_NAME", "LAST_NAME", "ADDRESS", "CITY", "STATE", "ZIP", "COUNTRY_CODE"
]
ExternalIdentityType = Literal[
    "LIVERAMP", "EXPERIAN", "MAID", "IDFA", "KANTAR", "MERKLE", "NEUSTAR", "REALID", "SAMBATV"
]
ConsentType = Literal["TCF", "GPP", "AMZN_AD_STORAGE", "AMZN_USER_DATA"]
Period = Literal["PT1H", "P1D", "P1M"]
DatasetKind = Literal["FACT", "DIMENSION"]
DATASET_ID = re.compile(r"[a-z0-9_]+")
"""What AMC takes as a dataset id (whole string): lowercase letters, digits and _."""


class InvalidDefinition(ValueError):
    """A dataset definition AMC would reject; the message lists each offending field and why."""


class _Model(BaseModel):
    # Unknown keys are refused: a misspelt `isMainEventtime` would otherwise silently turn a FACT
    # dataset into a DIMENSION one.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ExternalUserIdType(_Model):
    """Which identity a column holds: exactly one of a hashed PII type or a partner identity type."""

    hashed_pii: HashedPiiType | None = Field(default=None, alias="hashedPii")
    external_identity: ExternalIdentityType | None = Field(default=None, alias="externalIdentity")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ExternalUserIdType":
        if (self.hashed_pii is None) == (self.external_identity is None):
            raise ValueError("give exactly one of hashedPii or externalIdentity")
        return self


class Column(_Model):
    """One dataset column (field)."""

    name: str = Field(min_length=1)
    column_type: ColumnType = Field(alias="columnType")
    data_type: DataType = Field(alias="dataType")
    # Amazon's docs spell it both ways; `nullable` is what `to_api()` sends.
    nullable: StrictBool = Field(
        default=True, validation_alias=AliasChoices("nullable", "isNullable"), serialization_alias="nullable"
    )
    is_main_event_time: StrictBool | None = Field(default=None, alias="isMainEventTime")
    is_main_user_id: StrictBool | None = Field(default=None, alias="isMainUserId")
    is_main_user_id_type: StrictBool | None = Field(default=None, alias="isMainUserIdType")
    is_country_code: StrictBool | None = Field(default=None, alias="isCountryCode")
    external_user_id_type: ExternalUserIdType | None = Field(default=None, alias="externalUserIdType")
    consent_type: ConsentType | None = Field(default=None, alias="consentType")

    @field_validator("name")
    def _not_blank(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must not be blank")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "Column":
        if self.is_main_event_time and self.data_type not in ("TIMESTAMP", "DATE"):
            raise ValueError(f"isMainEventTime needs dataType TIMESTAMP or DATE, not {self.data_type}")
        # Hashed values are 64-char hex strings: no other data type can ever hold one.
        if self.hashed_pii is not None and self.data_type != "STRING":
            raise ValueError(f"a hashedPii column needs dataType STRING, not {self.data_type}")
        return self

    @property
    def hashed_pii(self) -> HashedPiiType | None:
        """The hashed PII type this column holds (EMAIL, PHONE, ...), if any."""
        return self.external_user_id_type.hashed_pii if self.external_user_id_type else None


class DatasetDefinition(_Model):
    """An AMC advertiser dataset: FACT when a column is the main event time, DIMENSION otherwise."""

    data_set_id: str = Field(alias="dataSetId", pattern=rf"^{DATASET_ID.pattern}$")
    description: str | None = None
    period: Period | None = None
    country_code: str | None = Field(default=None, alias="countryCode", pattern=r"^[A-Z]{2}$")
    columns: list[Column] = Field(min_length=1, max_length=100)

    @field_validator("columns")
    def _unique(cls, columns: list[Column]) -> list[Column]:
        # Query columns match case-insensitively, so names differing only in case could never be told apart.
        names = [column.name.lower() for column in columns]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"column names must be unique (ignoring case): {', '.join(duplicates)}")
        if "user_id" in names:
            raise ValueError("user_id is reserved: AMC derives it from the dataset's identity columns")
        event_times = [column.name for column in columns if column.is_main_event_time]
        if len(event_times) > 1:
            raise ValueError(f"at most one column can be isMainEventTime, got {', '.join(event_times)}")
        return columns

    @model_validator(mode="after")
    def _period_for_fact_only(self) -> "DatasetDefinition":
        if self.period is not None and self.main_event_time is None:
            raise ValueError("period is only allowed for a FACT dataset (one with an isMainEventTime column)")
        return self

    @classmethod
    def parse(cls, definition: str | dict[str, Any]) -> "DatasetDefinition":
        """Parse a definition given as JSON text or a dict, wrapped in `{"dataSet": ...}` or bare.

        Raises `InvalidDefinition` naming each offending field, e.g. `columns[3].dataType: ...`.
        """
        if isinstance(definition, str):
            try:
                definition = json.loads(definition)
            except json.JSONDecodeError as error:
                raise InvalidDefinition(f"dataset definition is not valid JSON: {error}") from None
        if isinstance(definition, dict) and set(definition) == {"dataSet"}:
            definition = definition["dataSet"]
        try:
            return cls.model_validate(definition)
        except ValidationError as error:
            raise InvalidDefinition(_describe(error)) from None

    @classmethod
    def from_api(cls, dataset: dict[str, Any]) -> "DatasetDefinition":
        """The definition of a dataset as AMC returns it, without the fields AMC adds.

        `GET /dataSets/{id}` answers with bookkeeping (instanceId, createdAt, ...) and may gain
        fields over time; only what a definition holds is kept, so an existing dataset is always
        readable while a configured definition stays strict.
        """
        top = {alias for name, f in cls.model_fields.items() for alias in (name, f.alias) if alias}
        known = {alias for name, f in Column.model_fields.items() for alias in (name, f.alias) if alias}
        known.add("isNullable")
        columns = [{k: v for k, v in column.items() if k in known} for column in dataset.get("columns") or []]
        return cls.parse({**{k: v for k, v in dataset.items() if k in top}, "columns": columns})

    @property
    def main_event_time(self) -> Column | None:
        """The main event time column, present exactly when the dataset is FACT."""
        return next((column for column in self.columns if column.is_main_event_time), None)

    @property
    def kind(self) -> DatasetKind:
        """FACT (time-partitioned by the main event time column) or DIMENSION."""
        return "FACT" if self.main_event_time is not None else "DIMENSION"

    @property
    def hashed_pii_columns(self) -> dict[str, HashedPiiType]:
        """Column name → hashed PII type, for the columns the upload must normalize and hash."""
        return {column.name: column.hashed_pii for column in self.columns if column.hashed_pii is not None}

    def to_api(self) -> dict[str, Any]:
        """The JSON body of `POST /dataSets`: `{"dataSet": {...}}` in Amazon's camelCase."""
        return {"dataSet": self.model_dump(mode="json", by_alias=True, exclude_none=True)}


def _describe(error: ValidationError) -> str:
    """One line per problem, each prefixed by the field's path in the JSON (`columns[3].dataType`)."""
    lines = []
    for problem in error.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        # Our own validators' messages read better without pydantic's "Value error, " prefix.
        message = str(problem["ctx"]["error"]) if problem["type"] == "value_error" else problem["msg"]
        lines.append(f"{path.lstrip('.') or 'dataSet'}: {message}")
    return "invalid dataset definition:\n" + "\n".join(f"- {line}" for line in lines)

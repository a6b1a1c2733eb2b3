"""AMC dataset upload settings (seed 003, `operation: upload`), checked before any row is read.

AMC refuses an OVERLAP_* strategy on a DIMENSION dataset and a definition whose id is not the
dataset's only once the query has run and the files are in S3; both are caught here, at load time
for a configured definition and before the query for the dataset AMC holds.
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from audience_pipeline.amc.definitions import DATASET_ID, DatasetDefinition
from audience_pipeline.amc.upload_files import FileFormat
from audience_pipeline.identity.countries import CountrySetting

UpdateStrategy = Literal["ADDITIVE", "FULL_REPLACE", "OVERLAP_REPLACE", "OVERLAP_KEEP"]


class DatasetUploadSettings(BaseModel):
    """One dataset upload, by seed 003's setting names."""

    # Unknown keys are refused, so that a misspelt optional setting cannot silently take its default.
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(description="The AMC dataset the rows are uploaded to.")
    query: str = Field(
        min_length=1, description="DuckDB SQL over the source whose columns match the dataset."
    )
    create_dataset: bool = Field(
        default=False, description="Create the dataset from `dataset_definition` if it does not exist."
    )
    dataset_definition: str | dict[str, Any] | None = Field(
        default=None,
        description="The dataset's AMC definition (JSON text or YAML mapping, as in seed 003); required with "
        "`create_dataset`.",
    )
    update_strategy: UpdateStrategy = Field(
        default="ADDITIVE", description="ADDITIVE, FULL_REPLACE, OVERLAP_REPLACE or OVERLAP_KEEP."
    )
    country_code: CountrySetting = Field(
        default=None, description="Source country of the data (ISO alpha-2); also the default country of PII."
    )
    file_format: FileFormat = Field(default="csv", description="`csv` (gzip compressed) or `parquet`.")
    clean_uploaded_files: bool = Field(
        default=False, description="Delete the uploaded parts and manifest from S3 once AMC succeeded."
    )

    @field_validator("dataset_id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not DATASET_ID.fullmatch(value):
            raise ValueError(f"{value!r}: AMC dataset ids are lowercase letters, digits and _")
        return value

    @field_validator("update_strategy", mode="before")
    @classmethod
    def _strategy_spelling(cls, value: Any) -> Any:
        # Seed 003 lists the strategies as "FULL REPLACE", "OVERLAP KEEP": take that spelling too.
        return value.strip().upper().replace(" ", "_") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_definition(self) -> "DatasetUploadSettings":
        if self.create_dataset and self.dataset_definition is None:
            raise ValueError("dataset_definition: required when create_dataset is true")
        definition = self.definition
        if definition is not None:
            if definition.data_set_id != self.dataset_id:
                raise ValueError(
                    f"dataset_definition: its dataSetId {definition.data_set_id!r} is not dataset_id "
                    f"{self.dataset_id!r}"
                )
            check_update_strategy(definition, self.update_strategy)
        return self

    @property
    def definition(self) -> DatasetDefinition | None:
        """The configured definition, parsed (InvalidDefinition names each bad field)."""
        return None if self.dataset_definition is None else DatasetDefinition.parse(self.dataset_definition)

    def definition_to_fit(
        self, held: dict[str, Any] | None, *, looked_up: bool, instance_id: str
    ) -> DatasetDefinition:
        """The definition the rows must fit: the dataset AMC holds (`held`), else the configured one.

        `looked_up` says whether AMC was asked (a dry run with a configured definition asks nothing).
        Raises `InvalidDefinition` when AMC's definition cannot be read, and ValueError when the
        dataset is missing and will not be created, or when the update strategy does not fit it.
        """
        definition = DatasetDefinition.from_api(held) if held is not None else self.definition
        if definition is None or (looked_up and held is None and not self.create_dataset):
            raise ValueError(
                f"dataset {self.dataset_id!r} does not exist in AMC instance {instance_id}; "
                "create it in AMC, or set `create_dataset: true` with a `dataset_definition`"
            )
        check_update_strategy(definition, self.update_strategy)
        return definition


def check_update_strategy(definition: DatasetDefinition, strategy: str) -> None:
    """OVERLAP_* replace or keep time partitions, which only a FACT dataset has; a ValueError otherwise."""
    if strategy.startswith("OVERLAP_") and definition.kind != "FACT":
        raise ValueError(
            f"update_strategy: {strategy} works on the time partitions of a FACT dataset, and "
            f"{definition.data_set_id!r} is a DIMENSION dataset (no isMainEventTime column); "
            "use ADDITIVE or FULL_REPLACE"
        )


def upload_name(dataset_id: str, run_id: str, now: datetime) -> str:
    """The name of one run's upload files: `start_upload_once` finds a started upload by its manifest,
    so no two runs may share it."""
    return f"{dataset_id}-{now:%Y%m%dT%H%M%S}-{run_id[:8]}"


def planned_upload_calls(dataset_id: str, bucket: str, parts: int, *, creates_dataset: bool) -> list[str]:
    """The S3 and AMC calls an upload of `parts` files makes, as a dry run reports them."""
    create = ["POST /dataSets (if it does not exist)"] if creates_dataset else []
    return [*create, f"PUT s3://{bucket}/<{parts} parts + manifest>", f"POST /uploads/{dataset_id}"]

"""Checks of AWS settings shared by the components that reach AWS (Firehose, AMC's S3)."""

import re

import dagster as dg

REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What an AWS access key id looks like: such a value is a secret pasted where a variable name belongs.
_ACCESS_KEY = re.compile(r"(AKIA|ASIA)[A-Z0-9]{16}")


def check_region(value: str) -> str:
    """`value` if it looks like an AWS region, else a ValueError for the setting's validator."""
    if not REGION.fullmatch(value):
        raise ValueError(f"{value!r} is not an AWS region such as us-east-1")
    return value


def check_env_var_name(value: str | None) -> str | None:
    """`value` if it is the name of an environment variable (settings never hold secrets themselves)."""
    if value is None:
        return None
    if _ACCESS_KEY.fullmatch(value) or not _ENV_VAR_NAME.fullmatch(value):
        # Never echo the value: it may be the secret itself.
        raise ValueError("must be the name of an environment variable holding the secret, not the secret")
    return value


def env_secret(destination: str, setting: str, name: str | None) -> str | None:
    """The secret in the environment variable a setting names (None when the setting is unset).

    Read through `dg.EnvVar`; a named variable that is not set fails the run naming the setting.
    """
    if not name:
        return None
    value = dg.EnvVar(name).get_value()
    if not value:
        raise dg.Failure(f"{destination} setting `{setting}`: environment variable {name} is not set")
    return value


def check_key_pair(access_key_id: str | None, secret_access_key: str | None) -> None:
    """Both key settings or neither (then boto3's default chain applies); a ValueError otherwise."""
    if (access_key_id is None) != (secret_access_key is None):
        raise ValueError("access_key_id and secret_access_key: set both, or neither for boto3's chain")

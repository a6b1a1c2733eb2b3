"""Fixtures of the contract tests: clients whose every exchange with the sandbox is recorded."""

from dataclasses import dataclass, field

import pytest

from audience_pipeline.clients.ads_api import AdsApiClient

from .openapi import Exchange, family_operations, operation_of, problems, recording_session


@dataclass
class Recorded:
    """An Amazon Ads API client at the sandbox and every exchange it has had."""

    api: AdsApiClient
    exchanges: list[Exchange] = field(default_factory=list)

    def check(self, family: str) -> None:
        """Every exchange so far conforms to Amazon's definitions, and together they cover every
        operation of `family`'s extract."""
        assert problems(self.exchanges) == []
        seen = {op.key for e in self.exchanges if (op := operation_of(e.method, e.path))}
        assert family_operations(family) - seen == set(), "operations of the extract never exercised"


@pytest.fixture
def recorded(sandbox) -> Recorded:
    """A recording client at the sandbox (token exchanges included), retrying without waits."""
    exchanges: list[Exchange] = []
    api = AdsApiClient(
        "sandbox-client",
        "sandbox-secret",
        "sandbox-refresh",
        base_url=sandbox.ads_url,
        token_url=sandbox.token_url,
        session=recording_session(exchanges),
        sleep=lambda seconds: None,
    )
    return Recorded(api, exchanges)

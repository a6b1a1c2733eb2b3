"""Sandbox settings: how long tokens live, how fast jobs move, how much of the data Amazon "knows"."""

from pathlib import Path

from pydantic import BaseModel, Field


class SandboxConfig(BaseModel):
    """Everything a sandbox run can be tuned with; the defaults behave like Amazon, only faster."""

    token_ttl_seconds: int = Field(default=3600, ge=1, description="Login with Amazon access token lifetime")
    auth_code_ttl_seconds: int = Field(
        default=300, ge=0, description="Login with Amazon authorization code lifetime (0: expired at once)"
    )
    # An async job (upload, deletion, audience) moves to its next state once it has been in the
    # current one for `job_step_seconds` and answered `job_step_polls` status polls there.
    job_step_seconds: float = Field(default=1.0, ge=0, description="Least seconds a job stays in each state")
    job_step_polls: int = Field(default=1, ge=0, description="Least status polls a job answers in each state")
    known_share: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="Share of hashed identities the synthetic Amazon identity graph knows",
    )
    seed: int = Field(default=0, description="Seed of the identity graph and of fault injection")
    aws_endpoint_url: str | None = Field(default=None, description="Where AMC reads uploaded files (S3)")
    state_dir: Path | None = Field(
        default=None, description="Keep state here across restarts; in memory if unset"
    )

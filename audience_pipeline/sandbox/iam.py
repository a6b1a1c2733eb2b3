"""IAM policies on the sandbox's Firehose, as a WSGI layer in front of the Firehose record layer.

moto answers every call whatever the caller's permissions. Here a policy registered for an access
key id (`POST /_sandbox/iam` `{"access_key_id": "...", "policy": {IAM policy document}}`, forgotten
on reset) governs every Firehose call signed with that key, the way IAM evaluates an identity-based
policy: `Allow` and `Deny` statements whose `Action` and `Resource` (a string or a list, `*` and `?`
wildcards, actions case-insensitive) match `firehose:<Operation>` on
`arn:aws:firehose:<region>:123456789012:deliverystream/<DeliveryStreamName>`; an explicit deny wins
and no matching allow is a deny. A denied call gets AWS's `AccessDeniedException`. Keys without a
policy are unrestricted. Conditions, `NotAction` and `NotResource` are refused when registering.
"""

import io
import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.wrappers import Request, Response

# moto's default account, which owns every sandbox stream.
ACCOUNT_ID = "123456789012"
_TARGET_PREFIX = "Firehose_20150804."
_CREDENTIAL = re.compile(r"Credential=([^/\s,]+)/\d{8}/([^/\s,]+)/firehose/aws4_request")


class Statement(BaseModel):
    """One statement of an identity-based policy, as IAM's JSON spells it."""

    model_config = ConfigDict(extra="forbid")

    sid: str | None = Field(default=None, alias="Sid")
    effect: Literal["Allow", "Deny"] = Field(alias="Effect")
    action: str | list[str] = Field(alias="Action")
    resource: str | list[str] = Field(alias="Resource")

    def matches(self, action: str, resource: str) -> bool:
        """Whether `action` (case-insensitive) and `resource` both match one of the statement's patterns."""
        return any(_wildcard(p, action, re.IGNORECASE) for p in _listed(self.action)) and any(
            _wildcard(p, resource) for p in _listed(self.resource)
        )


class Policy(BaseModel):
    """An IAM policy document: its statements (one object or a list)."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, alias="Version")
    statement: Statement | list[Statement] = Field(alias="Statement")

    def decide(self, action: str, resource: str) -> Literal["allowed", "explicit deny", "no allow"]:
        """IAM's evaluation of one identity-based policy: an explicit deny wins, then an allow."""
        matching = [s for s in _listed(self.statement) if s.matches(action, resource)]
        if any(s.effect == "Deny" for s in matching):
            return "explicit deny"
        return "allowed" if matching else "no allow"


class Registration(BaseModel):
    """The body of `POST /_sandbox/iam`."""

    access_key_id: str = Field(min_length=1)
    policy: Policy


class IamPolicies:
    """Wraps the Firehose layer; every request that is not a Firehose call passes straight through."""

    def __init__(self, app: Callable):
        self.app = app
        self._policies: dict[str, Policy] = {}
        self._lock = threading.Lock()

    def register(self, request: Request) -> tuple[dict, int]:
        """`POST /_sandbox/iam`: the policy of the body's access key id, replacing any earlier one."""
        try:
            registration = Registration.model_validate_json(request.get_data() or b"{}")
        except ValidationError as error:
            return {"error": "invalid IAM registration", "details": json.loads(error.json())}, 400
        with self._lock:
            self._policies[registration.access_key_id] = registration.policy
        return {"registered": registration.access_key_id}, 201

    def clear(self) -> None:
        """Forget every policy: all keys are unrestricted again."""
        with self._lock:
            self._policies.clear()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET") or ""
        signed = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION") or "")
        if not target.startswith(_TARGET_PREFIX) or not signed:
            return self.app(environ, start_response)
        access_key_id, region = signed.groups()
        with self._lock:
            policy = self._policies.get(access_key_id)
        if policy is None:
            return self.app(environ, start_response)
        data = Request(environ).get_data()
        # Hand the Firehose layer a fresh stream of the body read here.
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        action = "firehose:" + target.removeprefix(_TARGET_PREFIX)
        resource = _stream_arn(region, data)
        decision = policy.decide(action, resource)
        if decision == "allowed":
            return self.app(environ, start_response)
        reason = (
            "with an explicit deny in an identity-based policy"
            if decision == "explicit deny"
            else f"because no identity-based policy allows the {action} action"
        )
        message = (
            f"User: arn:aws:iam::{ACCOUNT_ID}:user/{access_key_id} is not authorized to perform: "
            f"{action} on resource: {resource} {reason}"
        )
        body = json.dumps({"__type": "AccessDeniedException", "message": message})
        return Response(body, status=400, mimetype="application/x-amz-json-1.1")(environ, start_response)


def _stream_arn(region: str, data: bytes) -> str:
    """The ARN of the stream a call names; `*` for a call naming none (IAM's resource for those)."""
    try:
        name = json.loads(data or b"{}").get("DeliveryStreamName")
    except (ValueError, AttributeError):
        name = None
    if not isinstance(name, str):
        return "*"
    return f"arn:aws:firehose:{region}:{ACCOUNT_ID}:deliverystream/{name}"


def _listed(value: object) -> list:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, flags: int = 0) -> bool:
    """IAM's matching: `*` is any run of characters, `?` any one character, all else literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags | re.DOTALL) is not None

"""Alerts as operators receive them: one message per incident, by e-mail (SMTP) and/or a webhook.

What the seeds' consoles tell their operators (mParticle's System Alerts, AEP's alert subscriptions,
Treasure Data's notifications) reaches ours as an `Alert`: which destination and audience, what
failed, the error as the run or Amazon reported it, and a link into the Dagster UI. An alert holds
only these fields, so what is sent never carries more than the pipeline chose to record (no member
data, no settings, no secrets). Sending is plain `smtplib` and `requests`; no Dagster here.
"""

import email.policy
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal

import requests
from requests.adapters import HTTPAdapter, Retry

_SUBJECT_PREFIX = "[audience_pipeline]"
# A message is read in a mail client or a chat channel: an error longer than this is cut.
_MAX_MESSAGE_CHARS = 2000
# Chat services answer these when busy; a notification is worth a few quick tries, not a sensor tick
# that outlasts its time limit (a long Retry-After is not waited for).
_WEBHOOK_RETRY = Retry(
    total=2,
    backoff_factor=1.0,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=frozenset({"POST"}),
    respect_retry_after_header=False,
    # The last answer's status says more than urllib3's "too many retries".
    raise_on_status=False,
)
# Seconds a server may take to answer one step; a sender waits for each channel in turn.
_TIMEOUT_SECONDS = 10.0

# Headers on one line (RFC 5322 allows 998 characters): Python folds a subject that fits on a line of
# its own before its first word, which readers then show with a leading space.
_ONE_LINE_HEADERS = email.policy.SMTP.clone(max_line_length=998)

Security = Literal["starttls", "ssl", "none"]


@dataclass(frozen=True)
class Alert:
    """One incident, worded for the person on call.

    `event` names the kind (`Run failed`, `Asset check failed`, `Destination stale`), `destination`
    the asset(s) concerned, `audience` the audience (partition key) if any, `what` what failed,
    `message` the error text as the run or Amazon reported it, `link` the page in the Dagster UI,
    and `notes` anything done about it (a schedule paused).
    """

    event: str
    destination: str
    what: str
    link: str
    audience: str | None = None
    message: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def subject(self) -> str:
        """One line: the kind of incident, the destination and the audience."""
        audience = f", audience {self.audience}" if self.audience is not None else ""
        return f"{_SUBJECT_PREFIX} {self.event}: {self.destination}{audience}"

    @property
    def body(self) -> str:
        """The alert's fields, one per line; the same text goes to every channel."""
        lines = [f"Destination: {self.destination}"]
        if self.audience is not None:
            lines.append(f"Audience: {self.audience}")
        lines.append(f"What failed: {self.what}")
        if self.message:
            lines.append(f"Message: {_cut(self.message)}")
        lines += self.notes
        lines.append(f"Details: {self.link}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send alert e-mails. `security`: `starttls` (upgrade a plain connection,
    usually port 587), `ssl` (TLS from the start, usually 465) or `none` (a trusted relay). The
    server's certificate and name are checked against the system's CAs, or those of `ca_file`."""

    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    security: Security = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = _TIMEOUT_SECONDS
    ca_file: str | None = None


def send_email(settings: SmtpSettings, alert: Alert) -> None:
    """Send `alert` as one plain-text e-mail to every recipient; SMTP errors are raised."""
    message = EmailMessage(policy=_ONE_LINE_HEADERS)
    message["Subject"] = alert.subject
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients)
    message.set_content(alert.body)
    context = ssl.create_default_context(cafile=settings.ca_file)
    if settings.security == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            settings.host, settings.port, timeout=settings.timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    with smtp:
        if settings.security == "starttls":
            smtp.starttls(context=context)
        if settings.username:
            smtp.login(settings.username, settings.password or "")
        smtp.send_message(message)


def post_webhook(url: str, alert: Alert, timeout: float = _TIMEOUT_SECONDS) -> None:
    """Post `alert` as Slack-compatible JSON (`{"text": ...}`) to `url`, retrying busy answers.

    A refused post raises an error naming the status only: the URL is a secret (it authorizes
    posting to the channel) and must not reach a log.
    """
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=_WEBHOOK_RETRY))
        session.mount("https://", HTTPAdapter(max_retries=_WEBHOOK_RETRY))
        try:
            response = session.post(url, json={"text": f"{alert.subject}\n{alert.body}"}, timeout=timeout)
        except requests.RequestException as error:
            raise WebhookError(f"the webhook could not be reached ({type(error).__name__})") from None
    if not response.ok:
        raise WebhookError(f"the webhook refused the alert: HTTP {response.status_code} {response.reason}")


class WebhookError(Exception):
    """A webhook post that failed; the message never holds the URL."""


class NotificationError(Exception):
    """Channels that did not take an alert; `delivered` says whether another channel did."""

    def __init__(self, message: str, delivered: bool):
        super().__init__(message)
        self.delivered = delivered


@dataclass(frozen=True)
class Channels:
    """Where alerts go: e-mail, a webhook, or both."""

    email: SmtpSettings | None = None
    webhook_url: str | None = field(default=None, repr=False)

    def send(self, alert: Alert) -> None:
        """Send `alert` on every channel. A channel that fails does not keep the others from
        receiving it; the failures are raised together afterwards."""
        failures, delivered = [], False
        if self.email is not None:
            try:
                send_email(self.email, alert)
                delivered = True
            except (smtplib.SMTPException, OSError) as error:
                failures.append(f"e-mail via {self.email.host}:{self.email.port} failed: {error}")
        if self.webhook_url is not None:
            try:
                post_webhook(self.webhook_url, alert)
                delivered = True
            except WebhookError as error:
                failures.append(str(error))
        if failures:
            raise NotificationError(f"{alert.subject!r}: {'; '.join(failures)}", delivered)


def _cut(text: str) -> str:
    """`text` within the length a reader takes in; the rest is in the UI."""
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[: _MAX_MESSAGE_CHARS - 1] + "…"

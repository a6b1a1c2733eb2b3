"""Alerts: what reaches a real SMTP server and a real webhook receiver on loopback, once per incident."""

import datetime
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Not exported by `dagster`: what the UI's schedule toggle works on.
from dagster._core.remote_representation.external import RemoteRepository
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._core.remote_representation.handle import RepositoryHandle
from pydantic import ValidationError

from audience_pipeline.components.alerts import AlertsComponent, EmailSettings
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY
from audience_pipeline.definitions import project_components
from audience_pipeline.notifications import Alert, Channels, NotificationError, SmtpSettings
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore

from .conftest import add_fault, wired_resources
from .sandbox.test_aws_firehose import PUT_RECORD_BATCH
from .test_firehose_delivery import EMAILS, Pipeline, env  # noqa: F401 (`env` is a fixture)

SMTP_PASSWORD = "smtp-pass-5f2c9e"
WEBHOOK_TOKEN = "T000-B000-hook-secret-81d4"
UI = "http://dagster.example:3000"


# --- the receiving ends ------------------------------------------------------------------------------


@dataclass
class Inbox:
    """The SMTP server's side: each message it accepted, and whether the sender had logged in."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    logged_in: list[bool] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.raw.append(envelope.original_content)
        self.messages.append(email.message_from_bytes(envelope.original_content, policy=email.policy.default))
        self.logged_in.append(bool(session.authenticated))
        self.tls.append(server.transport.get_extra_info("ssl_object") is not None)
        return "250 Message accepted for delivery"


def _login(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alerts",
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    """An SMTP server on loopback (aiosmtpd) that takes mail from the `alerts` login only."""
    received = Inbox(port=_free_port())
    controller = Controller(
        received, hostname="127.0.0.1", port=received.port, authenticator=_login, auth_require_tls=False
    )
    controller.start()
    yield received
    controller.stop()


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's hook name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.path, self.headers["Content-Type"], body))
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@dataclass
class Hook:
    server: ThreadingHTTPServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/services/{WEBHOOK_TOKEN}"

    def texts(self) -> list[str]:
        """The `text` of each JSON post that arrived; a post holding anything else fails the test."""
        texts = []
        for path, content_type, body in self.server.posts:
            assert path == f"/services/{WEBHOOK_TOKEN}" and content_type == "application/json"
            payload = json.loads(body)
            assert list(payload) == ["text"]
            texts.append(payload["text"])
        return texts


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A webhook receiver on loopback (http.server in a thread), answering 200."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.posts, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Hook(server)
    server.shutdown()
    server.server_close()


@pytest.fixture
def secrets(monkeypatch, hook):
    monkeypatch.setenv("ALERTS_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("ALERTS_WEBHOOK_URL", hook.url)


def alerts(inbox: Inbox, **settings) -> AlertsComponent:
    """The alerts component sending to both receivers, as a deployment's YAML would set it."""
    return AlertsComponent(
        email=EmailSettings(
            smtp_host="127.0.0.1",
            smtp_port=inbox.port,
            security="none",
            username="alerts",
            password="ALERTS_SMTP_PASSWORD",
            from_address="audience-pipeline@example.com",
            to=["oncall@example.com", "data-team@example.com"],
        ),
        webhook_url="ALERTS_WEBHOOK_URL",
        ui_base_url=UI + "/",
        **settings,
    )


def arrived(inbox: Inbox, hook: Hook) -> list[tuple[str, str]]:
    """(subject, body) of each alert, checked to have reached both channels alike and to hold no secret."""
    # SMTP carries lines ended by CRLF.
    mails = [(m["Subject"], m.get_content().replace("\r\n", "\n")) for m in inbox.messages]
    assert [f"{subject}\n{body}" for subject, body in mails] == hook.texts()
    assert all(inbox.logged_in)
    assert all(m["To"] == "oncall@example.com, data-team@example.com" for m in inbox.messages)
    everything = b"".join(inbox.raw).decode() + "".join(hook.texts())
    assert SMTP_PASSWORD not in everything and WEBHOOK_TOKEN not in everything
    return mails


class Ticks:
    """A sensor evaluated tick after tick as the daemon does, its cursor carried over."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs=None):
        self.sensor, self.instance, self.defs, self.cursor = sensor, instance, defs, None

    def __call__(self):
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return data


# --- a small project: an audience snapshot and a destination with a check, a schedule, AMC ------------

AUDIENCES = dg.StaticPartitionsDefinition(["1001", "1002"])
DESTINATION = dg.AssetKey(["firehose", "audience_changes"])
AMC_UPLOAD = dg.AssetKey(["amc", "dataset", "sample_purchases"])
AMAZON_SAYS = "ServiceUnavailableException: Slow down."


class Behaviour(dg.Config):
    fail: bool = False
    crash_quoting: str = ""
    rejected: int = 0


@dg.asset(key=SNAPSHOT_ASSET_KEY, partitions_def=AUDIENCES)
def audience_snapshot() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"members": 3})


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)

    @dg.multi_asset(
        specs=[dg.AssetSpec(DESTINATION, deps=[SNAPSHOT_ASSET_KEY])],
        check_specs=[dg.AssetCheckSpec("members_accepted", asset=DESTINATION, partitions_def=AUDIENCES)],
        partitions_def=AUDIENCES,
        name="firehose__audience_changes",
    )
    def delivery(context: dg.AssetExecutionContext, config: Behaviour):
        """Delivers like a destination component: its failures and checks read as theirs."""
        if config.crash_quoting:
            raise KeyError(config.crash_quoting)
        if config.fail:
            raise dg.Failure(
                f"Firehose audience-changes refused the delivery ({AMAZON_SAYS}) of audience "
                f"{context.partition_key}; the 0 records it confirmed before are committed, the rest are "
                "sent again on the next run"
            )
        yield dg.MaterializeResult(asset_key=DESTINATION)
        yield dg.AssetCheckResult(
            asset_key=DESTINATION,
            check_name="members_accepted",
            passed=config.rejected == 0,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"Amazon refused {config.rejected} member(s): INVALID_EMAIL ({config.rejected})",
        )


@dg.multi_asset(
    specs=[dg.AssetSpec(AMC_UPLOAD)],
    check_specs=[dg.AssetCheckSpec("amc_job_succeeded", asset=AMC_UPLOAD, blocking=True)],
)
def amc_upload():
    """An AMC upload waited for until AMC failed it."""
    yield dg.MaterializeResult(asset_key=AMC_UPLOAD)
    yield dg.AssetCheckResult(
        asset_key=AMC_UPLOAD,
        check_name="amc_job_succeeded",
        passed=False,
        description="AMC upload u-42 ended FAILED: Column purchase_value is not a DECIMAL",
    )


DELIVERIES = dg.define_asset_job("firehose__audience_changes_delivery", selection=[DESTINATION])
SCHEDULE = dg.ScheduleDefinition(name="deliveries_schedule", job=DELIVERIES, cron_schedule="0 * * * *")


@dg.sensor(job=DELIVERIES)
def delayed_deliveries_schedule():
    """Stands in for a schedule with a delay, which the project runs as a sensor."""


DEFS = dg.Definitions(
    assets=[audience_snapshot, delivery, amc_upload],
    jobs=[DELIVERIES],
    schedules=[SCHEDULE],
    sensors=[delayed_deliveries_schedule],
)


def deliver(instance, audience: str, tags=None, **behaviour) -> dg.ExecuteInProcessResult:
    return DEFS.resolve_job_def(DELIVERIES.name).execute_in_process(
        instance=instance,
        partition_key=audience,
        run_config={"ops": {"firehose__audience_changes": {"config": behaviour}}},
        tags=tags,
        raise_on_error=False,
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


# --- failed runs -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_a_failed_firehose_delivery_arrives_once_by_mail_and_webhook(
    tmp_path, sandbox, secrets, inbox, hook, instance
):
    """The real Firehose destination on the sandbox, every record refused: mParticle's "Retry Limit
    Exceeded" System Alert, as one e-mail and one post with nothing of the members in it."""
    pipeline = Pipeline(tmp_path, sandbox)
    sensor = Ticks(alerts(inbox).run_failure_sensor(), instance)
    sensor()  # started: failures from now on
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=1.0)

    run = dg.materialize(
        pipeline.assets,
        partition_key="7",
        instance=instance,
        resources={
            "source": DuckDBSource(database=str(pipeline.source_path)),
            "state_store": StateStore(root=str(pipeline.state)),
            **wired_resources("firehose", "ledger_cipher"),
        },
        raise_on_error=False,
    ).dagster_run
    sensor()
    sensor()  # a second look sends nothing more

    [(subject, body)] = arrived(inbox, hook)
    assert subject == "[audience_pipeline] Run failed: firehose/audience_changes, audience 7"
    assert "Destination: firehose/audience_changes\nAudience: 7\n" in body
    assert f"What failed: run {run.run_id[:8]}\n" in body
    assert (
        "Message: Retry Limit Exceeded: 4 records were not delivered to Firehose audience-changes after "
        "every retry; their changes stay pending for the next run\n" in body
    )
    assert body.endswith(f"Details: {UI}/runs/{run.run_id}\n")
    assert not any(address in body for address in EMAILS)


def test_an_unexpected_error_is_named_but_its_text_which_may_quote_members_is_not(
    secrets, inbox, hook, instance
):
    sensor = Ticks(alerts(inbox).run_failure_sensor(), instance)
    sensor()

    deliver(instance, "1001", crash_quoting="alice@example.com")
    sensor()

    [(_, body)] = arrived(inbox, hook)
    assert "Message: KeyError in the step's code (its text is left out: it may quote source data)\n" in body
    assert "alice@example.com" not in body


def _start(kind: str, name: str, instance: dg.DagsterInstance) -> tuple[str, str]:
    """Starts a schedule or sensor as the UI's toggle does; its state's origin and selector ids."""
    repository = DEFS.get_repository_def()
    remote_repository = RemoteRepository(
        RepositorySnap.from_def(repository),
        repository_handle=RepositoryHandle.for_test(location_name="test", repository_name=repository.name),
        auto_materialize_use_sensors=True,
    )
    if kind == "schedule":
        remote = remote_repository.get_schedule(name)
        instance.start_schedule(remote)
    else:
        remote = remote_repository.get_sensor(name)
        instance.start_sensor(remote)
    return remote.get_remote_origin_id(), remote.selector_id


@pytest.mark.parametrize(
    ("kind", "name"), [("schedule", SCHEDULE.name), ("sensor", delayed_deliveries_schedule.name)]
)
def test_failed_runs_in_a_row_pause_their_schedule_and_the_alert_says_so(
    kind, name, secrets, inbox, hook, instance
):
    """Treasure Data's "scheduled jobs that continuously fail ... may be disabled": after 2 failed runs
    in a row of one audience, the schedule (or the sensor standing in for a delayed one) that started
    them is stopped."""
    state_ids = _start(kind, name, instance)
    sensor = Ticks(alerts(inbox, pause_schedule_after_failures=2).run_failure_sensor(), instance)
    sensor()
    started = {f"dagster/{kind}_name": name}

    deliver(instance, "1001", started, fail=True)
    deliver(instance, "1001", started)  # a success breaks the streak
    deliver(instance, "1001", started, fail=True)
    deliver(instance, "1002", started, fail=True)  # another audience's failure is not in its streak
    sensor()
    assert instance.get_instigator_state(*state_ids).is_running
    deliver(instance, "1001", started, fail=True)
    sensor()
    sensor()

    mails = arrived(inbox, hook)
    assert [subject for subject, _ in mails] == [
        "[audience_pipeline] Run failed: firehose/audience_changes, audience 1001",
        "[audience_pipeline] Run failed: firehose/audience_changes, audience 1001",
        "[audience_pipeline] Run failed: firehose/audience_changes, audience 1002",
        "[audience_pipeline] Run failed: firehose/audience_changes, audience 1001",
    ]
    assert all(f"({AMAZON_SAYS}) of audience" in body for _, body in mails)
    assert all(
        f"of job firehose__audience_changes_delivery, started by {kind} {name}\n" in body for _, body in mails
    )
    assert not any("Paused" in body for _, body in mails[:3])
    assert (
        f"Paused: {kind} {name} was stopped after 2 failed runs in a row for audience 1001. "
        "Start it again in the Dagster UI (Automation) once the cause is fixed.\n" in mails[3][1]
    )
    assert not instance.get_instigator_state(*state_ids).is_running


def test_a_restarted_schedule_counts_its_failures_afresh(secrets, inbox, hook, instance):
    state_ids = _start("schedule", SCHEDULE.name, instance)
    sensor = Ticks(alerts(inbox, pause_schedule_after_failures=2).run_failure_sensor(), instance)
    sensor()
    scheduled = {"dagster/schedule_name": SCHEDULE.name}
    deliver(instance, "1001", scheduled, fail=True)
    deliver(instance, "1001", scheduled, fail=True)
    sensor()
    assert not instance.get_instigator_state(*state_ids).is_running

    _start("schedule", SCHEDULE.name, instance)  # the operator fixed the cause
    deliver(instance, "1001", scheduled, fail=True)
    sensor()

    assert instance.get_instigator_state(*state_ids).is_running
    assert ["Paused" in body for _, body in arrived(inbox, hook)] == [False, True, False]


def test_runs_of_the_automation_sensor_never_pause_it(secrets, inbox, hook, instance):
    """It starts every destination's deliveries: one failing destination must not stop the others."""
    sensor = Ticks(alerts(inbox, pause_schedule_after_failures=1).run_failure_sensor(), instance)
    sensor()
    automation = {
        "dagster/sensor_name": delayed_deliveries_schedule.name,
        "dagster/from_automation_condition": "true",
    }
    state_ids = _start("sensor", delayed_deliveries_schedule.name, instance)
    deliver(instance, "1001", automation, fail=True)
    sensor()

    assert instance.get_instigator_state(*state_ids).is_running
    [(_, body)] = arrived(inbox, hook)
    assert "Paused" not in body


# --- failed asset checks -----------------------------------------------------------------------------


def test_each_failed_check_arrives_once_with_amazons_message(secrets, inbox, hook, instance):
    sensor = Ticks(alerts(inbox).check_failure_sensor(), instance, DEFS)
    deliver(instance, "1001", rejected=2)  # before the sensor started: not alerted
    sensor()

    deliver(instance, "1002", rejected=0)  # passes
    run = deliver(instance, "1002", rejected=3).dagster_run
    # The AMC status sensor records a final job without a run.
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=AMC_UPLOAD,
            check_name="amc_job_succeeded",
            passed=False,
            description="AMC upload u-7 ended FAILED: Manifest lists a file that does not exist",
        )
    )
    sensor()
    sensor()

    [(warn_subject, warn), (error_subject, error)] = arrived(inbox, hook)
    assert warn_subject == "[audience_pipeline] Asset check failed: firehose/audience_changes, audience 1002"
    assert "What failed: check members_accepted (WARN)\n" in warn
    assert "Message: Amazon refused 3 member(s): INVALID_EMAIL (3)\n" in warn
    assert warn.endswith(f"Details: {UI}/runs/{run.run_id}\n")
    assert error_subject == "[audience_pipeline] Asset check failed: amc/dataset/sample_purchases"
    assert "Audience" not in error
    assert "What failed: check amc_job_succeeded (ERROR)\n" in error
    assert "Message: AMC upload u-7 ended FAILED: Manifest lists a file that does not exist\n" in error
    assert error.endswith(f"Details: {UI}/assets/amc/dataset/sample_purchases?view=checks\n")


def test_only_the_severities_chosen_alert(secrets, inbox, hook, instance):
    sensor = Ticks(alerts(inbox, check_severities=["ERROR"]).check_failure_sensor(), instance, DEFS)
    sensor()
    deliver(instance, "1001", rejected=3)
    sensor()
    assert arrived(inbox, hook) == []


def test_a_run_failed_by_a_blocking_check_is_one_incident(secrets, inbox, hook, instance):
    component = alerts(inbox)
    runs = Ticks(component.run_failure_sensor(), instance)
    checks = Ticks(component.check_failure_sensor(), instance, DEFS)
    runs()
    checks()

    assert not dg.materialize([amc_upload], instance=instance, raise_on_error=False).success
    runs()
    checks()

    [(subject, body)] = arrived(inbox, hook)
    assert subject == "[audience_pipeline] Asset check failed: amc/dataset/sample_purchases"
    assert "Message: AMC upload u-42 ended FAILED: Column purchase_value is not a DECIMAL\n" in body


def test_an_alert_no_channel_took_is_sent_on_the_next_tick(secrets, hook, instance):
    component = AlertsComponent(webhook_url="ALERTS_WEBHOOK_URL")
    sensor = Ticks(component.check_failure_sensor(), instance, DEFS)
    sensor()
    deliver(instance, "1001", rejected=1)

    hook.server.status = 404
    sensor()
    hook.server.status = 200
    sensor()
    sensor()

    texts = hook.texts()
    assert len(texts) == 2 and texts[0] == texts[1]  # refused once, then taken once


# --- stale destinations ------------------------------------------------------------------------------


def test_a_destination_behind_its_snapshot_for_too_long_arrives_once(secrets, inbox, hook, instance):
    now = [0.0]
    sensor = Ticks(
        alerts(inbox, stale_after_hours=6).stale_destination_sensor(clock=lambda: now[0]), instance, DEFS
    )
    dg.materialize([audience_snapshot], partition_key="1001", instance=instance)
    deliver(instance, "1001")
    snapshot = dg.materialize([audience_snapshot], partition_key="1002", instance=instance)
    [changed] = instance.fetch_materializations(SNAPSHOT_ASSET_KEY, limit=1).records
    assert changed.run_id == snapshot.run_id

    now[0] = changed.timestamp + 5 * 3600
    sensor()
    assert arrived(inbox, hook) == []
    now[0] = changed.timestamp + 7 * 3600
    sensor()
    sensor()
    deliver(instance, "1002")  # caught up
    sensor()

    [(subject, body)] = arrived(inbox, hook)
    assert subject == "[audience_pipeline] Destination stale: firehose/audience_changes, audience 1002"
    assert (
        "What failed: not materialized since the audience's snapshot changed 7.0 h ago (stale after 6 h); "
        "is the sensor that starts it running?\n" in body
    )
    assert body.endswith(f"Details: {UI}/assets/firehose/audience_changes\n")

    dg.materialize([audience_snapshot], partition_key="1002", instance=instance)
    now[0] += 24 * 3600
    sensor()
    assert len(arrived(inbox, hook)) == 2  # a new snapshot left behind is a new incident


# --- settings ----------------------------------------------------------------------------------------


def test_the_example_sends_nothing_until_a_channel_is_set():
    [example] = project_components(AlertsComponent)
    assert example.email is None and example.webhook_url is None
    assert not dg.build_defs_for_component(example).sensors


def test_each_chosen_event_has_its_sensor(inbox):
    defs = dg.build_defs_for_component(alerts(inbox, events=["run_failure", "stale_destination"]))
    assert sorted(s.name for s in defs.sensors) == ["alerts_run_failure", "alerts_stale_destination"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"webhook_url": "https://hooks.slack.com/services/T0/B0/x"}, "webhook_url"),
        (
            {"email": {"smtp_host": "h", "from_address": "a@b.c", "to": ["x@y.z"], "username": "u"}},
            "password",
        ),
        ({"email": {"smtp_host": "h", "from_address": "a@b.c", "to": ["x@y.z\nBcc: e@f.g"]}}, "e-mail"),
        ({"events": ["run_failure", "run_failure"]}, "at most once"),
        ({"pause_schedule_after_failures": 0}, "pause_schedule_after_failures"),
        (
            {"email": {"smtp_host": "h", "from_address": "a@b.c", "to": ["x@y.z"], "ca_file": "/no/ca.pem"}},
            "ca_file",
        ),
    ],
)
def test_bad_settings_fail_at_load_naming_the_setting(settings, named):
    with pytest.raises(ValidationError, match=named) as error:
        AlertsComponent.model_validate(settings)
    assert "hooks.slack.com" not in str(error.value)


def test_a_channel_that_fails_does_not_keep_the_other_from_the_alert(inbox, hook):
    hook.server.status = 400
    channels = Channels(
        email=SmtpSettings(
            host="127.0.0.1",
            port=inbox.port,
            sender="audience-pipeline@example.com",
            recipients=["oncall@example.com"],
            security="none",
            username="alerts",
            password=SMTP_PASSWORD,
        ),
        webhook_url=hook.url,
    )
    alert = Alert(event="Run failed", destination="dsp/advertiser_1", what="run 1", link=f"{UI}/runs/1")

    with pytest.raises(NotificationError, match="HTTP 400") as error:
        channels.send(alert)

    assert error.value.delivered and len(inbox.messages) == 1
    assert WEBHOOK_TOKEN not in str(error.value)


# --- TLS: a real certificate authority, a server certificate for 127.0.0.1 ----------------------------


@dataclass
class Pki:
    ca_file: str
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A CA and a certificate it signed for 127.0.0.1, as an internal mail relay would have."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, key, signer, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(
        "Test Relay CA", "Test Relay CA", ca_key, ca_key, [(x509.BasicConstraints(True, None), True)]
    )
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = certificate("127.0.0.1", "Test Relay CA", server_key, ca_key, [(san, False)])
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return Pki(str(folder / "ca.pem"), context)


@pytest.fixture(params=["starttls", "ssl"])
def tls_inbox(request, pki) -> Iterator[tuple[Inbox, str]]:
    """An SMTP server on loopback that speaks TLS only: STARTTLS required before anything else, or TLS
    from the first byte; logging in is refused without TLS."""
    received = Inbox(port=_free_port())
    # aiosmtpd counts only STARTTLS as TLS for logging in; from the first byte, there is no other way.
    tls = (
        {"tls_context": pki.server, "require_starttls": True, "auth_require_tls": True}
        if request.param == "starttls"
        else {"ssl_context": pki.server, "auth_require_tls": False}
    )
    controller = Controller(received, hostname="127.0.0.1", port=received.port, authenticator=_login, **tls)
    controller.start()
    yield received, request.param
    controller.stop()


def _tls_channels(inbox: Inbox, security: str, ca_file: str | None) -> Channels:
    return Channels(
        email=SmtpSettings(
            host="127.0.0.1",
            port=inbox.port,
            sender="audience-pipeline@example.com",
            recipients=["oncall@example.com"],
            security=security,
            ca_file=ca_file,
            username="alerts",
            password=SMTP_PASSWORD,
        )
    )


def test_an_alert_reaches_a_tls_server_whose_certificate_the_ca_file_vouches_for(tls_inbox, pki):
    inbox, security = tls_inbox
    alert = Alert(event="Run failed", destination="dsp/advertiser_1", what="run 1", link=f"{UI}/runs/1")

    _tls_channels(inbox, security, pki.ca_file).send(alert)

    [message] = inbox.messages
    assert message["Subject"] == alert.subject and inbox.logged_in == [True]
    assert inbox.tls == [True]


def test_a_certificate_no_trusted_ca_signed_is_refused_before_anything_is_sent(tls_inbox):
    inbox, security = tls_inbox
    alert = Alert(event="Run failed", destination="dsp/advertiser_1", what="run 1", link=f"{UI}/runs/1")

    # Without `ca_file`, only the system's CAs are trusted: not the relay's own.
    with pytest.raises(NotificationError, match="CERTIFICATE_VERIFY_FAILED") as error:
        _tls_channels(inbox, security, None).send(alert)

    assert not error.value.delivered and inbox.messages == []
    assert SMTP_PASSWORD not in str(error.value)


def test_alerts_settings_take_the_ca_file(pki):
    settings = EmailSettings(
        smtp_host="mail.internal", from_address="a@example.com", to=["b@example.com"], ca_file=pki.ca_file
    )
    assert settings.smtp().ca_file == pki.ca_file

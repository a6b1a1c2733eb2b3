"""Alerts: one e-mail and/or webhook post per incident, from sensors reading the Dagster instance.

The seeds tell their operators when something fails (mParticle's System Alerts, AEP's alert
subscriptions, Treasure Data's notifications); this component does it for the pipeline. Incidents:

- `run_failure`: a run of this code location failed (a delivery, a snapshot refresh, an AMC target),
  found by Dagster's own run failure sensor. The alert names the assets of the failed steps, the
  audience (the run's partition) and each step's error as the run reports it: a delivery's
  one-line `dg.Failure` quotes Amazon's message. The text of any other exception is left out, as it
  may quote source data.
- `check_failure`: an asset check failed with a severity in `check_severities` (rejected members,
  an AMC upload or audience that ended FAILED, an audience below the DSP minimum), read from the
  instance's asset check executions; the alert carries the check's description. A run that failed
  only because a blocking check failed is then left to this alert.
- `stale_destination`: a destination asset fed by `audience_snapshot` (Firehose, Ads Data Manager,
  the DSP queue) has not been materialized for an audience although the audience's snapshot was,
  more than `stale_after_hours` ago: its deliveries stopped following the snapshot.

Treasure Data disables "scheduled jobs that continuously fail ... after several notifications": with
`pause_schedule_after_failures: N`, when the schedule (or the sensor standing in for one: a delayed
schedule, a DSP flush) that started a failed run has started N failed runs in a row for that audience
since it was last started, it is stopped, and the alert says so.

Each incident is sent once: the run failure sensor's cursor is Dagster's, the other two keep their
own. With no channel configured the component defines no sensors.
"""

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dagster as dg

# Not exported by `dagster`: the filter picking one partition's check execution.
from dagster._core.event_api import PartitionKeyFilter

# Not exported by `dagster`: the states the scheduler keeps of schedules and sensors, which stopping
# one changes as the UI's toggle does.
from dagster._core.scheduler.instigation import InstigatorState, InstigatorType
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
    AssetCheckPartitionInfo,
)

# Not exported by `dagster`: the tags Dagster puts on the runs it starts.
from dagster._core.storage.tags import (
    AUTOMATION_CONDITION_TAG,
    PARTITION_NAME_TAG,
    SCHEDULE_NAME_TAG,
    SENSOR_NAME_TAG,
)
from pydantic import ConfigDict, Field, field_validator, model_validator

from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY
from audience_pipeline.components.aws_settings import check_env_var_name, env_secret
from audience_pipeline.components.setting_errors import CheckedSettings
from audience_pipeline.notifications import Alert, Channels, NotificationError, SmtpSettings

AlertEvent = Literal["run_failure", "check_failure", "stale_destination"]
Severity = Literal["ERROR", "WARN"]

_SENSOR_PREFIX = "alerts"
# How often the cursored sensors look; a run failure is seen by Dagster's sensor as often.
_INTERVAL_SECONDS = 30
_STALE_INTERVAL_SECONDS = 300
_CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"


class EmailSettings(dg.Model, dg.Resolvable):
    """Where alert e-mails go and the SMTP server that sends them. The password is the name of an
    environment variable, never the password."""

    model_config = ConfigDict(hide_input_in_errors=True)

    smtp_host: str = Field(min_length=1, description="The SMTP server.")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="Its port (587 STARTTLS, 465 SSL).")
    security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls",
        description="`starttls`, `ssl` (TLS from the start) or `none` (a relay you trust, e.g. on loopback).",
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the certificate authorities to trust instead of the system's, for a "
        "server whose certificate an internal CA signed.",
    )
    username: str | None = Field(default=None, description="SMTP login; unset: no login.")
    password: str | None = Field(
        default=None, description="Name of the environment variable holding the SMTP password."
    )
    from_address: str = Field(description="The sender, e.g. `audience-pipeline@example.com`.")
    to: list[str] = Field(min_length=1, description="The recipients.")

    @field_validator("from_address")
    @classmethod
    def _check_sender(cls, value: str) -> str:
        return _check_address(value)

    @field_validator("to")
    @classmethod
    def _check_recipients(cls, value: list[str]) -> list[str]:
        return [_check_address(address) for address in value]

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no file at {value}")
        return value

    @field_validator("password")
    @classmethod
    def _check_password(cls, value: str | None) -> str | None:
        return check_env_var_name(value)

    @model_validator(mode="after")
    def _check_login(self) -> "EmailSettings":
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password: set both to log in, or neither")
        return self

    def smtp(self) -> SmtpSettings:
        """The SMTP settings, the password read from its environment variable."""
        return SmtpSettings(
            host=self.smtp_host,
            port=self.smtp_port,
            sender=self.from_address,
            recipients=tuple(self.to),
            security=self.security,
            ca_file=self.ca_file,
            username=self.username,
            password=env_secret("Alerts", "email.password", self.password),
        )


class AlertsComponent(CheckedSettings, dg.Component, dg.Model, dg.Resolvable):
    """Sends one notification per failed run, failed asset check or stale destination, by e-mail
    and/or to a webhook, and stops a schedule that keeps failing; see the module docstring."""

    model_config = ConfigDict(hide_input_in_errors=True)

    email: EmailSettings | None = Field(default=None, description="Send alerts by e-mail.")
    webhook_url: str | None = Field(
        default=None,
        description="Name of the environment variable holding the webhook URL (Slack-compatible: "
        'alerts are posted as `{"text": ...}`).',
    )
    events: list[AlertEvent] = Field(
        default=["run_failure", "check_failure", "stale_destination"],
        description="The incidents alerted on: `run_failure`, `check_failure`, `stale_destination`.",
    )
    check_severities: list[Severity] = Field(
        default=["ERROR", "WARN"], min_length=1, description="Failed checks of these severities alert."
    )
    stale_after_hours: float = Field(
        default=24, gt=0, description="A destination this long behind its audience's snapshot is stale."
    )
    pause_schedule_after_failures: int | None = Field(
        default=None,
        ge=1,
        description="Stop a schedule after this many failed runs in a row for an audience; unset: never.",
    )
    ui_base_url: str = Field(
        default="http://localhost:3000", description="The Dagster UI, for the links in alerts."
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        return check_env_var_name(value)

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[AlertEvent]) -> list[AlertEvent]:
        if len(set(value)) != len(value):
            raise ValueError("each event at most once")
        return value

    @field_validator("ui_base_url")
    @classmethod
    def _check_ui(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """A sensor per alerted kind of incident; none without a channel."""
        if self.email is None and self.webhook_url is None:
            return dg.Definitions()
        builders = {
            "run_failure": self.run_failure_sensor,
            "check_failure": self.check_failure_sensor,
            "stale_destination": self.stale_destination_sensor,
        }
        return dg.Definitions(sensors=[builders[event]() for event in self.events])

    def channels(self) -> Channels:
        """The configured channels, their secrets read from the environment now."""
        return Channels(
            email=self.email.smtp() if self.email else None,
            webhook_url=env_secret("Alerts", "webhook_url", self.webhook_url),
        )

    # --- failed runs -------------------------------------------------------------------------------

    def run_failure_sensor(self) -> dg.SensorDefinition:
        """Dagster's run failure sensor over this code location's runs, alerting once per run."""

        @dg.run_failure_sensor(
            name=f"{_SENSOR_PREFIX}_run_failure",
            minimum_interval_seconds=_INTERVAL_SECONDS,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description="Alerts on every failed run (deliveries, snapshots, AMC) and stops a schedule "
            "that keeps failing when `pause_schedule_after_failures` says so.",
        )
        def alerts_run_failure(context: dg.RunFailureSensorContext):
            """Sends the failed run's alert, unless only blocking checks failed it and the check
            failure sensor alerts on them."""
            run = context.dagster_run
            failures = context.get_step_failure_events()
            note = self._pause(context.instance, run)
            if failures and note is None and all(self._alerted_as_check(event) for event in failures):
                return dg.SkipReason(f"run {run.run_id} failed on blocking checks, alerted as such")
            self.channels().send(self._run_alert(context, failures, note))

        return alerts_run_failure

    def _alerted_as_check(self, event: dg.DagsterEvent) -> bool:
        """Whether a step failed only because a blocking asset check of it failed, which the check
        failure sensor alerts on (a failed blocking check fails its step at ERROR severity)."""
        error = event.step_failure_data.error
        return (
            "check_failure" in self.events
            and "ERROR" in self.check_severities
            and error is not None
            and error.cls_name == _CHECK_FAILED_ERROR
        )

    def _run_alert(
        self, context: dg.RunFailureSensorContext, failures: list[dg.DagsterEvent], note: str | None
    ) -> Alert:
        """The alert of a failed run: the assets of its failed steps and their errors."""
        run = context.dagster_run
        planned = _planned_assets(context.instance, run.run_id)
        if failures:
            destinations = [
                key for event in failures for key in planned.get(event.step_key, [event.step_key])
            ]
            errors = [(event.step_key, _step_error(event)) for event in failures]
        else:
            destinations = [key for keys in planned.values() for key in keys] or [run.job_name]
            errors = [("", context.failure_event.message or "the run failed")]
        message = errors[0][1] if len(errors) == 1 else "\n".join(f"{step}: {text}" for step, text in errors)
        return Alert(
            event="Run failed",
            destination=", ".join(dict.fromkeys(destinations)),
            audience=run.tags.get(PARTITION_NAME_TAG),
            what=_describe_run(run),
            message=message,
            link=f"{self.ui_base_url}/runs/{run.run_id}",
            notes=(note,) if note else (),
        )

    def _pause(self, instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
        """Stops the schedule or sensor that started `run` when its last `pause_schedule_after_failures`
        finished runs for the run's audience, since it was last started, all failed; what was done,
        for the alert, or None.

        Runs of the automation condition sensor are not counted: it starts every destination's
        deliveries, and stopping it would stop them all."""
        limit = self.pause_schedule_after_failures
        started_by = _started_by(run)
        if limit is None or started_by is None or run.tags.get(AUTOMATION_CONDITION_TAG):
            return None
        tag, kind, name = started_by
        state = _running_instigator(instance, run, name, kind)
        if state is None:
            return None
        tags = {tag: name}
        audience = run.tags.get(PARTITION_NAME_TAG)
        if audience is not None:
            tags[PARTITION_NAME_TAG] = audience
        data: Any = state.instigator_data
        started = (
            data.start_timestamp if kind == InstigatorType.SCHEDULE else data.last_sensor_start_timestamp
        )
        # The finished runs before this one (the cursor pages back from it): runs that failed after it,
        # before this sensor saw it, are not its streak.
        earlier = (
            instance.get_runs(
                filters=dg.RunsFilter(
                    tags=tags,
                    statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
                    created_after=datetime.fromtimestamp(started, UTC) if started else None,
                ),
                cursor=run.run_id,
                limit=limit - 1,
            )
            if limit > 1
            else []
        )
        streak = [run, *earlier]
        if len(streak) < limit or any(r.status != dg.DagsterRunStatus.FAILURE for r in streak):
            return None
        if kind == InstigatorType.SCHEDULE:
            instance.stop_schedule(state.instigator_origin_id, state.selector_id, None)
        else:
            instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
        of_audience = f" for audience {audience}" if audience is not None else ""
        return (
            f"Paused: {kind.value.lower()} {name} was stopped after {limit} failed runs in a row"
            f"{of_audience}. Start it again in the Dagster UI (Automation) once the cause is fixed."
        )

    # --- failed asset checks -----------------------------------------------------------------------

    def check_failure_sensor(self) -> dg.SensorDefinition:
        """A sensor alerting once per failed evaluation of any asset check of this code location."""

        @dg.sensor(
            name=f"{_SENSOR_PREFIX}_check_failure",
            minimum_interval_seconds=_INTERVAL_SECONDS,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"Alerts on failed asset checks of severity {', '.join(self.check_severities)}.",
        )
        def alerts_check_failure(context: dg.SensorEvaluationContext) -> dg.SensorResult:
            """Reads the check evaluations recorded since the cursor (the storage id of the last
            evaluation read) and alerts on the failed ones. When first started it only records where
            the event log stands, as Dagster's run failure sensor does."""
            storage = context.instance.event_log_storage
            keys = list(_repository(context).asset_graph.asset_check_keys)
            after = int(context.cursor) if context.cursor else None
            infos = storage.get_asset_check_partition_info(keys, after_storage_id=after) if keys else []
            # The info is each check and partition's latest evaluation; a newer materialization of the
            # asset also brings it back, so only evaluations past the cursor count.
            evaluated = sorted(
                (info for info in infos if after is None or info.latest_check_event_storage_id > after),
                key=lambda info: info.latest_check_event_storage_id,
            )
            if after is None:
                latest = max((info.latest_check_event_storage_id for info in evaluated), default=0)
                return dg.SensorResult(
                    skip_reason="started: alerting on evaluations from now on", cursor=str(latest)
                )
            failed = [
                info
                for info in evaluated
                if info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED
            ]
            alerts = (
                (info.latest_check_event_storage_id, self._check_alert(context.instance, info))
                for info in failed
            )
            incidents = [(storage_id, alert) for storage_id, alert in alerts if alert is not None]
            newest = max((info.latest_check_event_storage_id for info in evaluated), default=after)
            return _send_check_alerts(context, self.channels, incidents, newest)

        return alerts_check_failure

    def _check_alert(self, instance: dg.DagsterInstance, info: AssetCheckPartitionInfo) -> Alert | None:
        """The alert of a check's failed evaluation; None for a severity not alerted on."""
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [info.check_key], partition_filter=PartitionKeyFilter(key=info.partition_key)
        ).get(info.check_key)
        if record is None or record.event is None or record.event.dagster_event is None:
            return None
        evaluation = record.event.dagster_event.event_specific_data
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            return None
        severity = evaluation.severity.value
        if severity not in self.check_severities:
            return None
        key = info.check_key.asset_key
        link = (
            f"{self.ui_base_url}/runs/{record.run_id}"
            if record.run_id
            else f"{self.ui_base_url}/assets/{'/'.join(key.path)}?view=checks"
        )
        return Alert(
            event="Asset check failed",
            destination=key.to_user_string(),
            audience=info.partition_key,
            what=f"check {info.check_key.name} ({severity})",
            message=evaluation.description,
            link=link,
        )

    # --- stale destinations ------------------------------------------------------------------------

    def stale_destination_sensor(self, clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
        """A sensor alerting once per snapshot materialization that a destination did not follow
        within `stale_after_hours`; `clock` gives the time."""
        max_age = self.stale_after_hours * 3600

        @dg.sensor(
            name=f"{_SENSOR_PREFIX}_stale_destination",
            minimum_interval_seconds=_STALE_INTERVAL_SECONDS,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"Alerts when a destination has not followed its audience's snapshot within "
            f"{self.stale_after_hours:g} h.",
        )
        def alerts_stale_destination(context: dg.SensorEvaluationContext) -> dg.SensorResult:
            """Alerts on each audience partition of a destination whose snapshot changed more than
            `stale_after_hours` ago and that has not been materialized since.

            The cursor keeps the incidents alerted and still stale (destination, audience and the
            snapshot materialization it did not follow), so each is alerted once."""
            alerted: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
            now = clock()
            stale = {}
            incidents = []
            for destination, audience, storage_id, changed in _behind(context.instance, _repository(context)):
                if now - changed < max_age:
                    continue
                incident = f"{destination.to_user_string()}|{audience}"
                stale[incident] = storage_id
                if alerted.get(incident) == storage_id:
                    continue
                hours = (now - changed) / 3600
                alert = Alert(
                    event="Destination stale",
                    destination=destination.to_user_string(),
                    audience=audience,
                    what=f"not materialized since the audience's snapshot changed {hours:.1f} h ago "
                    f"(stale after {self.stale_after_hours:g} h); is the sensor that starts it running?",
                    link=f"{self.ui_base_url}/assets/{'/'.join(destination.path)}",
                )
                incidents.append((storage_id, alert, incident))
            return _send_stale(context, self.channels, incidents, stale, alerted)

        return alerts_stale_destination


def _send_check_alerts(
    context: dg.SensorEvaluationContext,
    channels: Callable[[], Channels],
    incidents: list[tuple[int, Alert]],
    newest: int,
) -> dg.SensorResult:
    """Sends each incident's alert in storage id order; the cursor moves past each one sent.

    An alert no channel took stops the tick before it, so the next tick tries it again; one that some
    channel took is not sent again (that channel would get it twice). Either way errors are logged."""
    if not incidents:
        return dg.SensorResult(skip_reason="no new failed checks", cursor=str(newest))
    targets = channels()
    cursor = context.cursor
    for sent, (storage_id, alert) in enumerate(incidents):
        if not _deliver(context, targets, alert):
            return dg.SensorResult(skip_reason=f"{sent} alerts sent; the next is retried", cursor=cursor)
        cursor = str(storage_id)
    return dg.SensorResult(skip_reason=f"{len(incidents)} alerts sent", cursor=str(newest))


def _send_stale(
    context: dg.SensorEvaluationContext,
    channels: Callable[[], Channels],
    incidents: list[tuple[int, Alert, str]],
    stale: dict[str, int],
    alerted: dict[str, int],
) -> dg.SensorResult:
    """Sends the stale destinations' alerts; the cursor keeps the still stale incidents alerted, so a
    destination that caught up is forgotten and alerts again when it next falls behind."""
    still = {
        incident: storage_id for incident, storage_id in alerted.items() if stale.get(incident) == storage_id
    }
    if not incidents:
        return dg.SensorResult(skip_reason="no destination newly stale", cursor=json.dumps(still))
    targets = channels()
    for storage_id, alert, incident in incidents:
        if not _deliver(context, targets, alert):
            break
        still[incident] = storage_id
    return dg.SensorResult(skip_reason=f"{len(still)} stale destinations alerted", cursor=json.dumps(still))


def _deliver(context: dg.SensorEvaluationContext, channels: Channels, alert: Alert) -> bool:
    """Sends `alert`; False when no channel took it. Failed channels are logged on the tick."""
    try:
        channels.send(alert)
    except NotificationError as error:
        context.log.error(str(error))
        return error.delivered
    return True


def _behind(
    instance: dg.DagsterInstance, repository: dg.RepositoryDefinition
) -> Iterator[tuple[dg.AssetKey, str, int, float]]:
    """Each destination asset fed by `audience_snapshot` and audience whose snapshot was materialized
    after the destination last was: the destination, the audience, the snapshot materialization's
    storage id and its time."""
    graph = repository.asset_graph
    if not graph.has(SNAPSHOT_ASSET_KEY):
        return
    changed = instance.get_latest_storage_id_by_partition(
        SNAPSHOT_ASSET_KEY, dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    for key in sorted(graph.get(SNAPSHOT_ASSET_KEY).child_keys):
        partitions_def = graph.get(key).partitions_def
        if partitions_def is None:
            continue
        delivered = instance.get_latest_storage_id_by_partition(
            key, dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        for audience in partitions_def.get_partition_keys(dynamic_partitions_store=instance):
            storage_id = changed.get(audience)
            if storage_id is None or storage_id < delivered.get(audience, -1):
                continue
            [record] = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=SNAPSHOT_ASSET_KEY, storage_ids=[storage_id]), limit=1
            ).records
            yield key, audience, storage_id, record.timestamp


def _repository(context: dg.SensorEvaluationContext) -> dg.RepositoryDefinition:
    """The code location's definitions, which the daemon gives every sensor it evaluates."""
    if context.repository_def is None:
        raise dg.DagsterInvariantViolationError("the alert sensors read the code location's assets")
    return context.repository_def


def _running_instigator(
    instance: dg.DagsterInstance, run: dg.DagsterRun, name: str, kind: InstigatorType
) -> InstigatorState | None:
    """The stored state of the running schedule or sensor `name` of the run's code location.

    The scheduler stores a state for each schedule and sensor when it first runs, so one that started
    a run has one. A run started in process (Python API) has no code location: any of that name."""
    origin = run.remote_job_origin
    states = instance.all_instigator_state(
        repository_origin_id=origin.repository_origin.get_id() if origin else None, instigator_type=kind
    )
    return next((state for state in states if state.name == name and state.is_running), None)


def _planned_assets(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[str]]:
    """The assets each step of a run was to materialize, by step key."""
    planned: dict[str, list[str]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED):
        event = entry.dagster_event
        if event is not None and event.asset_key is not None:
            planned.setdefault(event.step_key or "", []).append(event.asset_key.to_user_string())
    return planned


def _step_error(event: dg.DagsterEvent) -> str:
    """A failed step's error as the run reports it.

    A `dg.Failure` is the pipeline's one-line message (quoting Amazon's, never member data). Dagster's
    own errors (a failed blocking check, a missing resource) name definitions. Any other exception of
    the step's code is named by its type only: its text may quote source data."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    error = data.error
    if error is None:
        return "the step failed"
    if error.cause is not None:
        return f"{error.cause.cls_name} in the step's code (its text is left out: it may quote source data)"
    return " ".join(error.message.split(": ", 1)[-1].split())


def _started_by(run: dg.DagsterRun) -> tuple[str, InstigatorType, str] | None:
    """The schedule or sensor that started `run`: the run tag naming it, its kind and its name."""
    for tag, kind in ((SCHEDULE_NAME_TAG, InstigatorType.SCHEDULE), (SENSOR_NAME_TAG, InstigatorType.SENSOR)):
        if tag in run.tags:
            return tag, kind, run.tags[tag]
    return None


def _describe_run(run: dg.DagsterRun) -> str:
    """`run <id>` with its job and what started it, e.g. `run 1a2b3c4d of job audience_snapshots,
    started by schedule audience_snapshots_schedule`."""
    text = f"run {run.run_id[:8]}"
    # Asset runs without a named job (automation, the UI's Materialize) have a hidden job name.
    if not run.job_name.startswith("__"):
        text += f" of job {run.job_name}"
    started_by = _started_by(run)
    if started_by is not None:
        _, kind, name = started_by
        text += f", started by {kind.value.lower()} {name}"
    return text


def _check_address(value: str) -> str:
    """An e-mail address of the settings: one `@`, no spaces or line breaks (which would inject headers)."""
    local, at, domain = value.partition("@")
    if not (local and at and domain) or "@" in domain or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an e-mail address")
    return value

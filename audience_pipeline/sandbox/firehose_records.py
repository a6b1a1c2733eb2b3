"""Firehose's record limits and per-record failures, as a WSGI layer between the sandbox middleware and moto.

moto delivers whatever `PutRecord`/`PutRecordBatch` it is given and never fails a record. This layer
refuses calls over AWS's limits the way AWS does, and, when the fault decision carries a
`record_failure_rate`, fails that share of the records, rounded down (so a lone record fails only
at rate 1), the same ones in every run: they are taken out of the call before moto sees it (so they
are not delivered) and put back into the answer as failed entries, so `RequestResponses` lines up
with the caller's `Records` exactly as AWS's does.

A batch costs this layer and moto work in proportion to its records, and little per record: moto
writes a batch to its S3 destination as the concatenation of the records' data, so the delivered
records go to moto joined into one record (the same object lands in S3), and the answer with a
record id per record is written here, rather than by moto's generic serializer, which spends several
times the rest of the call on 500 entries. (An HTTP endpoint destination, which the sandbox never
creates, would receive a batch as one record.)
"""

import base64
import binascii
import hashlib
import io
import json
import uuid
from collections.abc import Callable, Iterable

from werkzeug.wrappers import Request, Response

# AWS's limits, stated here rather than imported from the client so a wrong limit there fails its tests.
MAX_RECORDS_PER_CALL = 500
MAX_RECORD_BYTES = 1_000 * 1024
MAX_CALL_BYTES = 4 * 1024 * 1024

_PUT_RECORD = "Firehose_20150804.PutRecord"
_PUT_RECORD_BATCH = "Firehose_20150804.PutRecordBatch"
_DESCRIBE = "Firehose_20150804.DescribeDeliveryStream"
_JSON = "application/x-amz-json-1.1"
# AWS names both codes for a failed record; the sender must retry either.
_RECORD_ERRORS = (
    ("ServiceUnavailableException", "Slow down."),
    ("InternalFailure", "An internal error occurred."),
)


class FirehoseRecords:
    """Wraps moto's WSGI app; every request other than a Firehose put passes straight through."""

    def __init__(self, app: Callable, seed: int = 0):
        self.app = app
        self._seed = seed.to_bytes(8, "big", signed=True)

    def _failures(self, data: list[bytes], rate: float) -> list[tuple[str, str] | None]:
        """The records of a call that fail: `rate` of them, rounded down, picked by a draw from the
        seed and the call's records.

        Not by draws from one generator that every call takes its turn at: concurrent calls would
        take them in whatever order they arrive, and fail other records in every run. A retry of the
        records that failed is a call of its own: it fails that share of them, fewer each time and at
        last none, unless `rate` is 1.
        """
        digests = [hashlib.sha256(record).digest() for record in data]
        call = hashlib.sha256(self._seed + b"".join(digests)).digest()
        draws = [hashlib.sha256(call + digest).digest() for digest in digests]
        # Rounded first, so that a rate such as 0.29 of 100 records is 29, not 28.999...
        count = int(round(rate * len(data), 6))
        failing = set(sorted(range(len(data)), key=draws.__getitem__)[:count])
        return [_RECORD_ERRORS[draws[i][0] % 2] if i in failing else None for i in range(len(data))]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target == _DESCRIBE:
            return _with_destination_defaults(self._forward(environ, Request(environ).get_data()))(
                environ, start_response
            )
        if target not in (_PUT_RECORD, _PUT_RECORD_BATCH):
            return self.app(environ, start_response)
        request = Request(environ)
        try:
            body = json.loads(request.get_data())
            records = [body["Record"]] if target == _PUT_RECORD else list(body["Records"])
            data = [base64.b64decode(record["Data"], validate=True) for record in records]
        except (ValueError, KeyError, TypeError, binascii.Error):
            # Malformed calls get moto's own answer, as they would get AWS's.
            return self._forward(environ, request.get_data())(environ, start_response)
        refusal = _over_limits([len(record) for record in data])
        if refusal:
            return _error("InvalidArgumentException", refusal, 400)(environ, start_response)
        rate = getattr(environ.get("sandbox.decision"), "record_failure_rate", None) or 0.0
        failures = self._failures(data, rate) if rate else [None] * len(data)
        if target == _PUT_RECORD:
            response = self._put_record(environ, request.get_data(), failures[0])
        else:
            response = self._put_record_batch(environ, body, data, failures)
        return response(environ, start_response)

    def _put_record(self, environ: dict, data: bytes, failure: tuple[str, str] | None) -> Response:
        # A single record that fails is a failed call: PutRecord has no per-record answer.
        if failure is None:
            return self._forward(environ, data)
        return _error(failure[0], failure[1], 503 if failure[0] == "ServiceUnavailableException" else 500)

    def _put_record_batch(
        self, environ: dict, body: dict, data: list[bytes], failures: list[tuple[str, str] | None]
    ) -> Response:
        kept = [record for record, failure in zip(data, failures, strict=True) if failure is None]
        if kept:
            joined = base64.b64encode(b"".join(kept)).decode()
            answer = self._forward(environ, json.dumps({**body, "Records": [{"Data": joined}]}).encode())
        else:
            # moto would write an empty object for an empty batch; ask only whether the stream exists.
            environ["HTTP_X_AMZ_TARGET"] = _DESCRIBE
            name = {"DeliveryStreamName": body.get("DeliveryStreamName")}
            answer = self._forward(environ, json.dumps(name).encode())
        if answer.status_code != 200:
            return answer
        # Record ids are opaque and unique: one random UUID for the call, and the record's place in it.
        call = str(uuid.uuid4())
        responses = [
            {"RecordId": f"{call}-{index}"}
            if failure is None
            else {"ErrorCode": failure[0], "ErrorMessage": failure[1]}
            for index, failure in enumerate(failures)
        ]
        result = {
            "FailedPutCount": sum(failure is not None for failure in failures),
            "Encrypted": False,
            "RequestResponses": responses,
        }
        return Response(json.dumps(result), status=200, mimetype=_JSON)

    def _forward(self, environ: dict, data: bytes) -> Response:
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        return _model_error_body(Response.from_app(self.app, environ, buffered=True))


def _model_error_body(answer: Response) -> Response:
    """moto's error bodies name the message `Message`; botocore's model of every Firehose error names
    it `message`, as AWS sends it."""
    if answer.status_code < 400:
        return answer
    try:
        body = json.loads(answer.get_data())
    except ValueError:
        return answer
    if not isinstance(body, dict) or "Message" not in body:
        return answer
    body["message"] = body.pop("Message")
    return Response(json.dumps(body), status=answer.status_code, mimetype=_JSON)


# What AWS fills in for an S3 destination created without them; botocore's model makes them required
# in DescribeDeliveryStream's answer, and moto answers only what the stream was created with.
_S3_DESTINATION_DEFAULTS = {
    "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": 300},
    "CompressionFormat": "UNCOMPRESSED",
    "EncryptionConfiguration": {"NoEncryptionConfig": "NoEncryption"},
}


def _with_destination_defaults(answer: Response) -> Response:
    if answer.status_code != 200:
        return answer
    body = json.loads(answer.get_data())
    for destination in body["DeliveryStreamDescription"].get("Destinations", []):
        for kind in ("S3DestinationDescription", "ExtendedS3DestinationDescription"):
            if kind in destination:
                destination[kind] = {**_S3_DESTINATION_DEFAULTS, **destination[kind]}
    return Response(json.dumps(body), status=200, mimetype=_JSON)


def _over_limits(sizes: list[int]) -> str | None:
    """AWS's wording of the first limit the call breaks, if any (sizes are before base64)."""
    if not 1 <= len(sizes) <= MAX_RECORDS_PER_CALL:
        return f"Records must hold 1 to {MAX_RECORDS_PER_CALL} records; got {len(sizes)}."
    for index, size in enumerate(sizes):
        if size > MAX_RECORD_BYTES:
            return f"Record {index} is {size} bytes; a record may be at most {MAX_RECORD_BYTES} bytes."
    if sum(sizes) > MAX_CALL_BYTES:
        return f"The call carries {sum(sizes)} bytes of records; at most {MAX_CALL_BYTES} are allowed."
    return None


def _error(kind: str, message: str, status: int) -> Response:
    return Response(json.dumps({"__type": kind, "message": message}), status=status, mimetype=_JSON)

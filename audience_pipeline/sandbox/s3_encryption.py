"""S3's default encryption: an object written without server-side encryption is stored as SSE-S3.

Since January 2023 S3 encrypts every new object with SSE-S3 (AES256) unless the request asks for
another kind, and HeadObject and GetObject report `ServerSideEncryption: AES256`. moto stores such an
object unencrypted, so this layer asks for AES256 on the requests that create objects: PutObject and
CopyObject (`PUT /bucket/key`) and CreateMultipartUpload (`POST /bucket/key?uploads`). The sandbox's
S3 is reached at a loopback address, which clients address path-style (`/bucket/key`).
"""

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

SSE = "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION"
SSE_CUSTOMER = "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_ALGORITHM"
# Sub-resources that a PUT on a key writes without creating an object (UploadPart included).
_NOT_OBJECT_WRITES = frozenset({"tagging", "acl", "retention", "legal-hold", "partNumber", "uploadId"})


class DefaultEncryption:
    """WSGI middleware giving S3 object writes that name no encryption SSE-S3 (AES256)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if creates_object(environ) and SSE not in environ and SSE_CUSTOMER not in environ:
            environ = {**environ, SSE: "AES256"}
        return self.app(environ, start_response)


def creates_object(environ: dict[str, Any]) -> bool:
    """Whether the request is an S3 PutObject, CopyObject or CreateMultipartUpload."""
    if "HTTP_X_AMZ_TARGET" in environ:  # Firehose and the other JSON-protocol services
        return False
    _, _, key = environ.get("PATH_INFO", "").lstrip("/").partition("/")
    query = set(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    if not key:
        return False
    if environ["REQUEST_METHOD"] == "PUT":
        return not query & _NOT_OBJECT_WRITES
    return environ["REQUEST_METHOD"] == "POST" and "uploads" in query

"""Object storage checked before anything is written there: the artifact store
(``artifacts.store: s3://BUCKET``, read and written through boto3, as Optuna's
``Boto3ArtifactStore`` does) and Ray's results and checkpoints (``ray.storage_path:
s3://BUCKET/PATH``, through pyarrow's filesystem, as Ray opens it).

Credentials and the endpoint come from where boto3 and pyarrow look for them: the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``, ``~/.aws``, an
instance role) and ``AWS_ENDPOINT_URL`` for an S3-compatible server (MinIO, Ceph, a
cloud's own). Wrong credentials, a missing bucket or an endpoint nobody answers on are a
``UserInputError`` naming the config key and the fix, before any trial runs: otherwise
every trial would fail on its own at its end, with its adapter lost.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from vlsweep.errors import UserInputError

CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, ~/.aws/credentials, an "
    "instance role) to keys that may read and write it"
)


def endpoint() -> str:
    """Where S3 requests go: ``AWS_ENDPOINT_URL`` (an S3-compatible server), else AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def boto3_client() -> Any:
    """A boto3 S3 client that gives up on an unreachable endpoint in seconds (boto3's
    defaults retry for minutes) for the checks; the store itself uses boto3's defaults."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}))


def check_bucket(bucket: str, key: str) -> None:
    """That ``bucket`` exists and these credentials may use it; ``key`` names where the
    user gave it (``artifacts.store``, ``--artifacts``)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    where = f"{key}: s3://{bucket} (at {endpoint()})"
    try:
        client = boto3_client()
        client.head_bucket(Bucket=bucket)
        # Keys that may read but not write would fail every trial at its end: write and
        # remove a probe.
        probe = f".vlsweep-probe-{uuid.uuid4().hex}"
        client.put_object(Bucket=bucket, Key=probe, Body=b"")
        client.delete_object(Bucket=bucket, Key=probe)
    except NoCredentialsError:
        raise UserInputError(f"{where}: no AWS credentials were found; {CREDENTIALS_HINT}") from None
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = err.response.get("Error", {}).get("Code", "")
        if status == 404 or code in ("404", "NoSuchBucket"):
            raise UserInputError(
                f"{where}: the bucket does not exist; create it (aws s3 mb s3://{bucket}) or name another"
            ) from None
        if status in (401, 403):
            raise UserInputError(
                f"{where}: the credentials were refused ({status} {code}); {CREDENTIALS_HINT}"
            ) from None
        raise UserInputError(f"{where}: {code or status}: {err}") from None
    except BotoCoreError as err:  # EndpointConnectionError, timeouts, bad endpoint URLs
        raise UserInputError(
            f"{where}: cannot reach the endpoint ({err}); check AWS_ENDPOINT_URL (unset for AWS itself) "
            "and the network"
        ) from None


def check_storage_path(uri: str, key: str = "ray.storage_path") -> None:
    """That Ray can use ``uri`` (``s3://BUCKET/PATH``) for its results and checkpoints,
    as Ray opens it (pyarrow's filesystem from the URI)."""
    if not uri.startswith("s3://"):
        return
    import pyarrow.fs

    bucket = uri[len("s3://") :].split("/", 1)[0]
    where = f"{key}: {uri} (at {endpoint()})"
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        if fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise UserInputError(
                f"{where}: the bucket {bucket} does not exist; create it (aws s3 mb s3://{bucket}) "
                "or name another"
            )
        probe = f"{path.rstrip('/')}/.vlsweep-probe-{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except OSError as err:
        text = str(err)
        if (
            "ACCESS_DENIED" in text
            or "403" in text
            or "InvalidAccessKeyId" in text
            or "credentials" in text.lower()
        ):
            raise UserInputError(f"{where}: the credentials were refused; {CREDENTIALS_HINT}") from None
        if "NETWORK_CONNECTION" in text or "connect" in text.lower() or "resolve" in text.lower():
            raise UserInputError(
                f"{where}: cannot reach the endpoint; check AWS_ENDPOINT_URL (unset for AWS itself) "
                "and the network"
            ) from None
        raise UserInputError(f"{where}: {text.splitlines()[0][:300]}") from None

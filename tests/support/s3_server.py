"""moto's standalone S3 server on loopback, with credentials of its own, for the
object-storage tests: ``.ci/s3.sh`` starts one for a whole CI run (``python -m
tests.support.s3_server`` prints the environment it exports); without it the ``s3`` fixture
starts one per test session.

moto enforces signed requests after its first few (``INITIAL_NO_AUTH_ACTION_COUNT``):
those make an IAM user allowed everything and its access key, which the tests then use as
a user's ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``; any other key is refused.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The IAM calls that make the user and its key: moto lets exactly these through unsigned.
_SETUP_CALLS = 3
REGION = "us-east-1"


def start() -> tuple[subprocess.Popen, dict[str, str]]:
    """Start the server; returns it and the environment a user of it sets."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_CALLS)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not answer on {url}") from None
            time.sleep(0.2)
    iam = boto3.client(
        "iam", endpoint_url=url, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup"
    )
    iam.create_user(UserName="vlsweep-tests")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="vlsweep-tests", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="vlsweep-tests")["AccessKey"]
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": REGION,
    }
    return proc, env


def main() -> None:
    proc, env = start()
    for k, v in env.items():
        print(f"export VLSWEEP_TEST_S3_{k}={v}")
    print(f"export VLSWEEP_TEST_S3_STOP='kill {proc.pid}'")


if __name__ == "__main__":
    main()

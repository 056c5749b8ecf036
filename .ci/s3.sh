#!/usr/bin/env bash
# Start moto's S3 server on loopback (from PyPI, in the dev extra) with credentials of its
# own, for the object-storage tests, and print the environment they read.
# Usage: eval "$(bash .ci/s3.sh)"
set -euo pipefail
python -m tests.support.s3_server

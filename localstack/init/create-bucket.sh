#!/usr/bin/env bash
# Runs inside the LocalStack container once S3 is ready: creates the bucket Cairn uses.
set -euo pipefail
awslocal s3 mb "s3://${CAIRN_S3_BUCKET:-cairn}" || true

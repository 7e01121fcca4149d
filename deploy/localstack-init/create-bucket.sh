#!/usr/bin/env bash
# LocalStack runs this once S3 is ready: the bucket the compose file's agents use.
awslocal s3 mb s3://cairn

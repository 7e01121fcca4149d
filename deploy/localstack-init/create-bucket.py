"""LocalStack runs this once S3 is ready: the bucket the compose file's agents use.

Python with the standard library only, so the official LocalStack image and the one
deploy/build-local-deps.sh builds both run it; creating it twice is harmless."""
import urllib.error
import urllib.request

try:
    urllib.request.urlopen(urllib.request.Request("http://localhost:4566/cairn", method="PUT"))
    print("created bucket cairn")
except urllib.error.HTTPError as e:
    if e.code != 409:  # BucketAlreadyOwnedByYou
        raise

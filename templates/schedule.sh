#!/usr/bin/env bash
# Creates a Cloud Scheduler job that launches the Flex Template on a schedule.
#
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-bucket \
#   SERVICE_ACCOUNT=scheduler@my-project.iam.gserviceaccount.com \
#   templates/schedule.sh nightly-embeddings "0 3 * * *" \
#     gs://my-bucket/lists/photos.csv gs://my-bucket/embeddings/nightly
#
# The Scheduler job POSTs templates/launch-request.json (placeholders filled in)
# to the Dataflow flexTemplates:launch method as SERVICE_ACCOUNT. Every run uses
# the same Dataflow job name, so a run that starts while the previous one is
# still active is refused by Dataflow (409 ALREADY_EXISTS) rather than writing
# the same output at the same time; the next scheduled run proceeds normally.
set -euo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 NAME SCHEDULE INPUT OUTPUT (PROJECT, REGION, BUCKET, SERVICE_ACCOUNT set)" >&2
  exit 2
fi
name=$1 schedule=$2 input=$3 output=$4
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
: "${SERVICE_ACCOUNT:?set SERVICE_ACCOUNT}"
if ! [[ $name =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
  echo "NAME must be lower-case letters, digits and hyphens, starting with a letter: $name" >&2
  exit 2
fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "python3 is needed to write the request body (gcloud needs it too)" >&2
  exit 2
fi

# The body is parsed and written by a JSON encoder, never pasted together as text: a
# path may hold any character (&, |, \, ", spaces, unicode).
here=$(cd "$(dirname "$0")" && pwd)
body=$(JOB_NAME=$name BUCKET=$BUCKET INPUT=$input OUTPUT=$output "$python" - "$here/launch-request.json" <<'PY'
import json, os, re, sys

values = {key: os.environ[key] for key in ("JOB_NAME", "BUCKET", "INPUT", "OUTPUT")}
placeholder = re.compile(r"@(JOB_NAME|BUCKET|INPUT|OUTPUT)@")


def fill(item):
    if isinstance(item, dict):
        return {key: fill(value) for key, value in item.items()}
    if isinstance(item, list):
        return [fill(value) for value in item]
    if isinstance(item, str):
        # One pass, so that a value holding "@BUCKET@" stays as it is.
        return placeholder.sub(lambda found: values[found.group(1)], item)
    return item


with open(sys.argv[1], encoding="utf-8") as template:
    print(json.dumps(fill(json.load(template)), ensure_ascii=False))
PY
)

exec gcloud scheduler jobs create http "$name" \
  --project "$PROJECT" \
  --location "$REGION" \
  --schedule "$schedule" \
  --time-zone Etc/UTC \
  --uri "https://dataflow.googleapis.com/v1b3/projects/$PROJECT/locations/$REGION/flexTemplates:launch" \
  --http-method POST \
  --headers Content-Type=application/json \
  --message-body "$body" \
  --oauth-service-account-email "$SERVICE_ACCOUNT" \
  --oauth-token-scope https://www.googleapis.com/auth/cloud-platform

#!/bin/sh
# Prints the SeaweedFS S3 identities of the template given ($1, deploy/seaweedfs-s3.json) with the key pair the
# API and workers use: LORAPORT_S3_ACCESS_KEY and LORAPORT_S3_SECRET_KEY, from the environment docker-compose.yml
# gives the s3 service. Nothing else of the template changes.
set -eu
: "${LORAPORT_S3_ACCESS_KEY:?is not set}" "${LORAPORT_S3_SECRET_KEY:?is not set}"

# A value inside a JSON string (\ and " escaped), then inside sed's replacement (\, & and the | delimiter escaped).
escaped() {
  printf '%s' "$1" | sed -e 's/[\\"]/\\&/g' -e 's/[\\&|]/\\&/g'
}

sed -e "s|\${LORAPORT_S3_ACCESS_KEY}|$(escaped "$LORAPORT_S3_ACCESS_KEY")|g" \
    -e "s|\${LORAPORT_S3_SECRET_KEY}|$(escaped "$LORAPORT_S3_SECRET_KEY")|g" "$1"

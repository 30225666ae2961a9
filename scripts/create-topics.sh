#!/usr/bin/env bash
# Creates Kafka topics idempotently: scripts/create-topics.sh NAME:PARTITIONS [NAME:PARTITIONS...]
# against $KAFKA_BROKERS (default 127.0.0.1:9092) with the tansu CLI; existing topics are kept.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($#)) || die "usage: $0 NAME:PARTITIONS [NAME:PARTITIONS...]"
[[ -x $TANSU ]] || die "$TANSU not found: run scripts/stack-up.sh first"
broker="${KAFKA_BROKERS:-$HOST:$KAFKA_PORT}"
broker="${broker%%,*}"; broker="${broker#*://}"   # first broker, without any scheme

for spec in "$@"; do
  [[ $spec =~ ^([^:]+):([0-9]+)$ ]] || die "bad topic spec '$spec' (want NAME:PARTITIONS)"
  name=${BASH_REMATCH[1]} partitions=${BASH_REMATCH[2]}
  if out=$("$TANSU" topic create --broker "tcp://$broker" --partitions "$partitions" "$name" 2>&1); then
    log "topic $name created ($partitions partitions)"
  elif grep -qi "already.*exists" <<<"$out"; then
    log "topic $name already exists"
  else
    echo "$out" >&2
    die "could not create topic $name on $broker"
  fi
done

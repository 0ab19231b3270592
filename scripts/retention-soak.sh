#!/usr/bin/env bash
# A long run with retention shrunk to seconds (docs/retention.md): `sluice dev` purges
# every few seconds while `sluice bench` keeps publishing at a steady rate; every SAMPLE
# seconds one CSV line gives the database files' sizes (SQLite; or the database's size on
# PostgreSQL) and the RSS of the `sluice dev` process. After warm-up (a retention window
# or two) the columns should stay flat within 10%.
#
#   scripts/retention-soak.sh                      # SQLite, 5 minutes at 200 events/s
#   MINUTES=10 RATE=500 scripts/retention-soak.sh
#   SLUICE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/soak scripts/retention-soak.sh
#
# Knobs (environment): SLUICE (the binary, default target/release/sluice, else
# target/debug/sluice), MINUTES (5), RATE (events/s, 200), SAMPLE (seconds, 15),
# RETENTION (30s), IDEMPOTENCY (10s), EVERY (the purge interval, 5s), PAYLOAD (bytes, 256),
# DIR (the data directory, a fresh temporary one).
set -euo pipefail

SLUICE=${SLUICE:-}
if [[ -z "$SLUICE" ]]; then
  if [[ -x target/release/sluice ]]; then SLUICE=target/release/sluice; else SLUICE=target/debug/sluice; fi
fi
MINUTES=${MINUTES:-5}
RATE=${RATE:-200}
SAMPLE=${SAMPLE:-15}
RETENTION=${RETENTION:-30s}
IDEMPOTENCY=${IDEMPOTENCY:-10s}
EVERY=${EVERY:-5s}
PAYLOAD=${PAYLOAD:-256}
DIR=${DIR:-$(mktemp -d /tmp/sluice-soak.XXXXXX)}
CONTROL=127.0.0.1:50071
DATA=127.0.0.1:50072
ADMIN=sk_soak_admin_key_0123456789

"$SLUICE" dev --data-dir "$DIR" --admin-key "$ADMIN" \
  --control-listen "$CONTROL" --data-listen "$DATA" \
  --retention "$RETENTION" --idempotency-retention "$IDEMPOTENCY" \
  --retention-interval "$EVERY" >"$DIR/dev.log" 2>&1 &
DEV=$!
trap 'kill "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/${DATA%:*}/${DATA#*:}") 2>/dev/null; then break; fi
  sleep 0.2
done

EVENTS=$((RATE * 60 * MINUTES))
"$SLUICE" bench --control "http://$CONTROL" --data "http://$DATA" --admin-key "$ADMIN" \
  --pid "$DEV" --rate "$RATE" --events "$EVENTS" --payload-bytes "$PAYLOAD" \
  --timeout $((60 * MINUTES + 300)) --json >"$DIR/bench.json" 2>"$DIR/bench.log" &
BENCH=$!

size() { stat -c %s "$1" 2>/dev/null || echo 0; }
start=$(date +%s)
echo "# data dir $DIR; retention $RETENTION, keys $IDEMPOTENCY, purge every $EVERY; $RATE events/s for $MINUTES min"
# PostgreSQL reuses a deleted row's space once (auto)vacuum has passed. A server with
# autovacuum off (some test setups) grows whatever the purge deletes: the script then runs
# VACUUM itself at each sample, as autovacuum would, and says so.
VACUUM_BY_HAND=
if [[ -n "${SLUICE_DATABASE_URL:-}" ]] &&
  [[ "$(psql "$SLUICE_DATABASE_URL" -Atc "SHOW autovacuum" 2>/dev/null)" == "off" ]]; then
  VACUUM_BY_HAND=1
  echo "# autovacuum is off on this server: VACUUM runs at each sample instead"
fi
if [[ -n "${SLUICE_DATABASE_URL:-}" ]]; then
  echo "seconds,database_bytes,rss_kib"
else
  echo "seconds,control_db,control_wal,data_db,data_wal,rss_kib"
fi
while kill -0 "$BENCH" 2>/dev/null; do
  sleep "$SAMPLE"
  t=$(($(date +%s) - start))
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$DEV/status" 2>/dev/null || echo 0)
  if [[ -n "${SLUICE_DATABASE_URL:-}" ]]; then
    if [[ -n "$VACUUM_BY_HAND" ]]; then psql "$SLUICE_DATABASE_URL" -qc "VACUUM" >/dev/null 2>&1 || true; fi
    bytes=$(psql "$SLUICE_DATABASE_URL" -Atc "SELECT pg_database_size(current_database())" 2>/dev/null || echo 0)
    echo "$t,$bytes,$rss"
  else
    echo "$t,$(size "$DIR/control.db"),$(size "$DIR/control.db-wal"),$(size "$DIR/data.db"),$(size "$DIR/data.db-wal"),$rss"
  fi
done
wait "$BENCH" && echo "# bench finished: $DIR/bench.json" || echo "# bench failed: see $DIR/bench.log"
grep -c "retention purge pass" "$DIR/dev.log" | sed 's/^/# purge passes that deleted rows: /'

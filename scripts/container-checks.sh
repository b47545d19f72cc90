#!/usr/bin/env bash
# container-checks.sh: builds both connector images from the one Dockerfile with
# ../shared/tools/container-check (podman, no registry, no Docker daemon) and runs them the way
# Airbyte does: spec, check, discover and read for the source, against the local Stripe emulator on
# the host (127.0.0.1; the containers share the host network), then that read piped into the
# destination image's write, with the SQLite store on a mounted /local volume, read back on the host;
# finally `perly sync` (the packaged command) in the destination image.
# Called by .ci/run. First run on a machine: about 90 s (the base image is built locally).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
check_tool=${CONTAINER_CHECK:-$root/../shared/tools/container-check}
py=${PYTHON:-$root/.venv/bin/python}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
source_image=local/source-perly-stripe:$version
destination_image=local/destination-perly:$version
work=$(mktemp -d /tmp/perly-container-checks.XXXXXX)
emulator_pid=
cleanup() {
  [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { echo "container-checks: FAILED: $*" >&2; exit 1; }

# Every message of one type from a connector's output (the CDK also prints LOG lines).
messages_of() { grep -E "^\{\"type\": ?\"$1\"" "$2" || true; }

# Build output and the spec both go to stdout: kept in a file, shown when something fails.
build_and_spec() {  # build_and_spec TARGET IMAGE
  local out=$work/$1-spec.out
  if ! "$check_tool" "$root" "$2" --target "$1" --build-arg "VERSION=$version" spec >"$out" 2>&1; then
    tail -40 "$out" >&2
    fail "building or running the $1 image"
  fi
  messages_of SPEC "$out" | grep -q connectionSpecification || { tail -20 "$out" >&2; fail "$1 spec printed no SPEC"; }
  echo "$1: built $2, spec OK"
}
step "build the source image and run spec"
build_and_spec source "$source_image"
step "build the destination image and run spec"
build_and_spec destination "$destination_image"

# container-check has built the images and written the podman settings this machine needs; later runs
# need volume mounts, which it does not take, so they call podman directly with the same settings.
export CONTAINERS_CONF=${CONTAINER_CHECK_WORK:-/tmp/container-check}/containers.conf
for image in "$source_image" "$destination_image"; do
  podman image inspect --format '{{index .Config.Labels "io.airbyte.name"}}:{{index .Config.Labels "io.airbyte.version"}} user={{.Config.User}} entrypoint={{.Config.Entrypoint}}' "$image"
done
[ "$(podman image inspect --format '{{.Config.User}}' "$source_image")" = airbyte ] || fail "source image does not run as airbyte"

step "start the Stripe emulator on the host"
"$py" -m integration_tests.stripe_emulator --port 0 --customers 40 --seed 42 >"$work/emulator.out" 2>"$work/emulator.err" &
emulator_pid=$!
for _ in $(seq 100); do [ -s "$work/emulator.out" ] && break; sleep 0.1; done
url=$("$py" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["url"])' "$work/emulator.out") \
  || fail "emulator did not start: $(cat "$work/emulator.err")"
now=$("$py" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["now"])' "$work/emulator.out")
echo "emulator at $url"
key=sk_test_perly_demo  # the emulator's built-in test key

mkdir -p "$work/config" "$work/local"
chmod 0777 "$work/local"  # written by the image's non-root user (uid 1000)
"$py" - "$work/config" "$url" "$key" "$now" <<'PY'
import json, sys
from datetime import UTC, datetime
from pathlib import Path
config, url, key = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
as_of = datetime.fromtimestamp(int(sys.argv[4]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # the emulator's now
(config / "source.json").write_text(json.dumps({"api_key": key, "base_url": url, "max_requests_per_second": 200}))
(config / "bad_source.json").write_text(json.dumps({"api_key": "sk_test_revoked0000", "base_url": url}))
destination = {"store": {"store_type": "sqlite", "path": "/local/perly.db"}, "as_of": as_of}
(config / "destination.json").write_text(json.dumps(destination))
PY
run_source() { podman run --rm --network=host -v "$work/config:/config:ro" "$source_image" "$@"; }

step "source check (good key, then an unknown key)"
run_source check --config /config/source.json >"$work/check.out"
messages_of CONNECTION_STATUS "$work/check.out" | grep -q '"SUCCEEDED"' || fail "check failed: $(cat "$work/check.out")"
run_source check --config /config/bad_source.json >"$work/bad-check.out" || true
messages_of CONNECTION_STATUS "$work/bad-check.out" | grep -q '"FAILED"' || fail "check accepted an unknown key"
! grep -q sk_test_revoked0000 "$work/bad-check.out" || fail "check printed the API key"

step "source discover and read"
run_source discover --config /config/source.json >"$work/discover.out"
"$py" - "$work" <<'PY'
import json, sys
from pathlib import Path
from perly_runner.pipeline import configured_catalog
work = Path(sys.argv[1])
catalog = next(json.loads(l)["catalog"] for l in (work / "discover.out").read_text().splitlines()
               if l.startswith('{"type":"CATALOG"') or l.startswith('{"type": "CATALOG"'))
(work / "config" / "catalog.json").write_text(json.dumps(configured_catalog(catalog)))
print("streams:", ", ".join(s["name"] for s in catalog["streams"]))
PY
run_source read --config /config/source.json --catalog /config/catalog.json >"$work/read.out"
records=$(messages_of RECORD "$work/read.out" | wc -l)
[ "$records" -gt 0 ] || fail "read returned no records"
echo "read: $records records, $(messages_of STATE "$work/read.out" | wc -l) states"

step "destination check and write (read piped in, SQLite on the /local volume)"
run_destination() {
  podman run --rm -i --network=host -v "$work/config:/config:ro" -v "$work/local:/local" "$destination_image" "$@"
}
run_destination check --config /config/destination.json </dev/null >"$work/destination-check.out"
messages_of CONNECTION_STATUS "$work/destination-check.out" | grep -q '"SUCCEEDED"' \
  || fail "destination check failed: $(cat "$work/destination-check.out")"
run_destination write --config /config/destination.json --catalog /config/catalog.json <"$work/read.out" \
  >"$work/write.out"
acknowledged=$(messages_of STATE "$work/write.out" | wc -l)
[ "$acknowledged" -gt 0 ] || fail "destination acknowledged no state"
[ -f "$work/local/perly.db" ] || fail "no SQLite store on the volume"

step "store on the host volume"
"$py" - "$work/local/perly.db" "$url" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
customers = db.execute("SELECT count(*) FROM stripe_customers WHERE NOT deleted").fetchone()[0]
health = db.execute("SELECT count(*) FROM perly_customer_health").fetchone()[0]
print(f"stripe_customers: {customers}, perly_customer_health: {health}")
if customers == 0 or health < customers:
    sys.exit("store is missing customers or their health rows")
PY
"$py" -m destination_perly.report --db "$work/local/perly.db" --top 5

step "perly sync in the image (the packaged command, outside Airbyte)"
"$py" - "$work/config" <<'PY'
import json, sys
from pathlib import Path
config = Path(sys.argv[1])
destination = json.loads((config / "destination.json").read_text())
destination["store"]["path"] = "/local/perly-sync.db"
(config / "destination-sync.json").write_text(json.dumps(destination))
PY
podman run --rm --network=host -v "$work/config:/config:ro" -v "$work/local:/local" \
  --entrypoint /opt/perly/bin/perly "$destination_image" \
  sync --source-config /config/source.json --destination-config /config/destination-sync.json \
  --state /local/state.json --top 3 >"$work/perly-sync.out" 2>&1 \
  || { tail -20 "$work/perly-sync.out" >&2; fail "perly sync in the image"; }
grep -q "Sync (full)" "$work/perly-sync.out" || fail "perly sync printed no sync: $(tail -5 "$work/perly-sync.out")"
[ -s "$work/local/state.json" ] || fail "perly sync saved no state"
! grep -q "$key" "$work/perly-sync.out" || fail "perly sync printed the API key"
grep -E "records in|customers" "$work/perly-sync.out" | head -3
echo
echo "container-checks: OK ($records records read, $acknowledged states acknowledged; perly sync in the image)"

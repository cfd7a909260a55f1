#!/usr/bin/env bash
# make demo: mocknuvla serving a run of the application definition (recipes/application.json),
# driven by cnsmo-role's drop-in ss-* tools as the recipes use them, with every check's result and
# a PASS/FAIL summary; then, when the services are built in (cmd/cnsmo-demo), the simulated
# multi-cloud deployment. It removes what it created.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/bin"
export CNSMO_BIN="$BIN"
work=$(mktemp -d /tmp/cnsmo-demo.XXXXXX)
mock_pid=""
cleanup() {
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

pass=0; fail=0
check() { # check "what" expected-exit command...
  local what=$1 want=$2; shift 2
  local out rc
  out=$("$@" 2>"$work/err"); rc=$?
  if [ "$rc" = "$want" ]; then
    pass=$((pass + 1)); printf '  ok    %-62s exit %s %s\n' "$what" "$rc" "${out:+→ $out}"
  else
    fail=$((fail + 1)); printf '  FAIL  %-62s exit %s, want %s: %s\n' "$what" "$rc" "$want" "$(head -c 200 "$work/err")"
  fi
}

echo "== mocknuvla: a run of recipes/application.json (CNSMO server + 3 web VMs)"
"$BIN/mocknuvla" --listen 127.0.0.1:0 --deployment recipes/application.json --env-dir "$work/ctx" \
  --log-format json >"$work/mock.out" 2>"$work/mock.log" &
mock_pid=$!
for _ in $(seq 100); do grep -q '^mocknuvla: listening' "$work/mock.out" && break; sleep 0.1; done
line=$(grep '^mocknuvla: listening' "$work/mock.out") || { echo "mocknuvla did not start"; cat "$work/mock.log"; exit 1; }
echo "  $line"
url=$(echo "$line" | awk '{print $4}')

# The ss-* tools as a VM without SlipStream's client gets them: links to cnsmo-role.
mkdir -p "$work/links"
for t in ss-get ss-set ss-display ss-abort ss-random; do ln -s "$BIN/cnsmo-role" "$work/links/$t"; done
as() { # as INSTANCE cmd...: run with that VM's context
  local inst=$1; shift
  ( set -a; . "$work/ctx/$inst.env"; set +a; PATH="$work/links:$PATH" "$@" )
}

echo
echo "== the parameter protocol, through the ss-* tools"
check "cnsmo.1: ss-set cnsmo.server.nodeinstanceid cnsmo.1" 0 as cnsmo.1 ss-set cnsmo.server.nodeinstanceid cnsmo.1
check "web.2: ss-get cnsmo.server.nodeinstanceid (mapped input)" 0 as web.2 ss-get cnsmo.server.nodeinstanceid
check "web.1: ss-display 'cnsmo: waiting' (statecustom)" 0 as web.1 ss-display "cnsmo: waiting"
check "web.1: ss-get --noblock net.services.enabled (not yet set)" 0 as web.1 ss-get --noblock net.services.enabled
check "web.1: ss-get --timeout 1 net.services.enabled → timeout" 9 as web.1 ss-get --timeout 1 net.services.enabled
check "web.3: ss-set net.services.enabled true" 0 as web.3 ss-set net.services.enabled true
check "web.3: ss-get net.services.enabled" 0 as web.3 ss-get net.services.enabled
check "web.1: ss-get web.3:net.services.enabled (another instance)" 0 as web.1 ss-get web.3:net.services.enabled
check "web.1: ss-random -s 8 (random value)" 0 as web.1 ss-random -s 8
long=$(head -c 5000 /dev/zero | tr '\0' x)
check "web.1: ss-set a 5000-character value → refused" 3 as web.1 ss-set vpn.csr "$long"
check "web.1: ss-get an undeclared key → 404, the run is aborted" 7 as web.1 ss-get no.such.param
check "web.2: ss-get after the abort → aborted" 8 as web.2 ss-get --timeout 2 net.services.enabled
check "web.2: ss-get --ignore-abort ss:abort (the reason)" 0 as web.2 ss-get --ignore-abort ss:abort
check "web.2: ss-abort on the aborted run → refused (as SlipStream's own)" 8 as web.2 ss-abort "again"
admin404() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/admin/runs")" = 404 ]; }
check "the run API (what VMs reach) serves no admin route → 404" 0 admin404

echo
echo "== a stale role.pid (after a crash or a reboot) names a live process that is no cnsmo-role"
mkdir -p "$work/state"; sleep 60 & other=$!; echo "$other" >"$work/state/role.pid"
check "cnsmo-role status → not running" 3 "$BIN/cnsmo-role" status --state-dir "$work/state"
check "cnsmo-role stop signals nothing" 0 "$BIN/cnsmo-role" stop --state-dir "$work/state"
check "the process named in role.pid still runs" 0 kill -0 "$other"
kill "$other" 2>/dev/null; wait "$other" 2>/dev/null

echo
if [ -f cmd/cnsmo-demo/main.go ]; then
  echo "== the services on simulated VMs"
  if [ "$(id -u)" -ne 0 ]; then
    echo "  FAIL  the simulated VMs need root"; fail=$((fail + 1))
  elif go run ./cmd/cnsmo-demo; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
  fi
else
  echo "== the services (VPN, firewall, load balancer) are not built into this version yet:"
  check "cnsmo-role server says so and exits non-zero" 1 "$BIN/cnsmo-role" server
fi

echo
echo "== summary: $pass passed, $fail failed"
if [ "$fail" -eq 0 ]; then echo "RESULT: PASS"; exit 0; fi
echo "RESULT: FAIL"; exit 1

#!/bin/sh
# Teardown: removes what cnsmo created on this VM (containers, rules, devices, files).
set -eu
. "$(dirname "$0")/lib.sh"
"$CNSMO_BIN_DIR/cnsmo-role" stop --state-dir "$CNSMO_STATE_DIR"

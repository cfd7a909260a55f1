#!/bin/sh
# Deployment recipe of an application component: CNSMO first (VPN client, firewall), then the
# application's own setup, which may bind to vpn.address (`ss-get vpn.address`).
set -eu
. "$(dirname "$0")/lib.sh"
cnsmo_install
if [ -n "${CNSMO_FW_RULES_FILE:-}" ]; then
  cnsmo_set_file net.i2cat.cnsmo.service.fw.rules "$CNSMO_FW_RULES_FILE"
fi
cnsmo_start agent
cnsmo_wait
# --- the application's own setup goes here; for example:
# ADDR=$(ss-get vpn.address); start-my-app --listen "$ADDR"
if [ -n "${CNSMO_APP_SETUP:-}" ]; then
  sh -c "$CNSMO_APP_SETUP"
fi

#!/bin/sh
# Deployment recipe of the CNSMO server component: runs the VPN server and the load balancer
# (when enabled in net.services.enable) and publishes cnsmo.server.nodeinstanceid.
set -eu
. "$(dirname "$0")/lib.sh"
cnsmo_install
cnsmo_start server
cnsmo_wait

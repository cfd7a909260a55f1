#!/bin/sh
# Teardown: removes what cnsmo created on this VM (containers, rules, devices, files); the role is
# no longer started at boot.
set -eu
. "$(dirname "$0")/lib.sh"
cnsmo_stop

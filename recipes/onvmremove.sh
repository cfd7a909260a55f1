#!/bin/sh
# SlipStream's onvmremove hook (SLIPSTREAM_SCALING_NODE, SLIPSTREAM_SCALING_VMS set by the executor):
# the roles follow scale events by polling; this only makes them look now.
set -eu
. "$(dirname "$0")/lib.sh"
echo "cnsmo: ${SLIPSTREAM_SCALING_ACTION:-vm_remove} ${SLIPSTREAM_SCALING_NODE:-?}: ${SLIPSTREAM_SCALING_VMS:-}"
cnsmo_kick

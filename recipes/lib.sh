#!/bin/sh
# Shared by the cnsmo recipes: install cnsmo-role and its ss-* links, start a role in the background.
# Sourced, not run. Variables:
#   CNSMO_ROLE_URL   where to download cnsmo-role from when it is not installed (optional)
#   CNSMO_BIN_DIR    where cnsmo-role is or goes (default /opt/cnsmo/bin)
#   CNSMO_LINK_DIR   where the ss-* links go when the image has no SlipStream client (default /usr/local/bin)
#   CNSMO_STATE_DIR  the role's state, logs and pid file (default /var/lib/cnsmo)
#   CNSMO_WAIT       seconds to wait for net.services.enabled (default 1800; 0 = forever)
#   CNSMO_FW_RULES_FILE  (application VMs) a file whose content becomes this VM's firewall rules
set -eu
CNSMO_BIN_DIR=${CNSMO_BIN_DIR:-/opt/cnsmo/bin}
CNSMO_LINK_DIR=${CNSMO_LINK_DIR:-/usr/local/bin}
CNSMO_STATE_DIR=${CNSMO_STATE_DIR:-/var/lib/cnsmo}
CNSMO_WAIT=${CNSMO_WAIT:-1800}

cnsmo_install() {
  if [ ! -x "$CNSMO_BIN_DIR/cnsmo-role" ]; then
    if [ -z "${CNSMO_ROLE_URL:-}" ]; then
      echo "cnsmo: $CNSMO_BIN_DIR/cnsmo-role is missing and CNSMO_ROLE_URL is not set" >&2
      exit 1
    fi
    mkdir -p "$CNSMO_BIN_DIR"
    curl -fsSL -o "$CNSMO_BIN_DIR/cnsmo-role.tmp" "$CNSMO_ROLE_URL"
    chmod 0755 "$CNSMO_BIN_DIR/cnsmo-role.tmp"
    mv "$CNSMO_BIN_DIR/cnsmo-role.tmp" "$CNSMO_BIN_DIR/cnsmo-role"
  fi
  # ss-* tools: keep SlipStream's own when the image has them, else answer with cnsmo-role.
  mkdir -p "$CNSMO_LINK_DIR"
  for t in ss-get ss-set ss-display ss-abort ss-random; do
    command -v "$t" >/dev/null 2>&1 || ln -sf "$CNSMO_BIN_DIR/cnsmo-role" "$CNSMO_LINK_DIR/$t"
  done
  PATH="$CNSMO_LINK_DIR:$CNSMO_BIN_DIR:$PATH"
  export PATH
  mkdir -p "$CNSMO_STATE_DIR"
}

# cnsmo_start ROLE: start `cnsmo-role ROLE` in the background, unless it already runs. Whether
# a role runs is decided by its lock (`cnsmo-role status`), never by a pid file alone: after a
# crash or a reboot role.pid may name any process.
cnsmo_start() {
  role=$1
  if st=$("$CNSMO_BIN_DIR/cnsmo-role" status --state-dir "$CNSMO_STATE_DIR"); then
    echo "cnsmo: $role already $st"
    return 0
  fi
  nohup "$CNSMO_BIN_DIR/cnsmo-role" "$role" --state-dir "$CNSMO_STATE_DIR" >>"$CNSMO_STATE_DIR/role.log" 2>&1 </dev/null &
  echo "cnsmo: started $role (pid $!), log in $CNSMO_STATE_DIR/role.log"
}

# cnsmo_wait: block until this instance's network services are ready.
cnsmo_wait() {
  ss-display "cnsmo: waiting for network services"
  ss-get --timeout "$CNSMO_WAIT" net.services.enabled >/dev/null
  ss-display "cnsmo: network services ready"
}

# cnsmo_kick: make a running role reconcile now (scale events).
cnsmo_kick() {
  "$CNSMO_BIN_DIR/cnsmo-role" kick --state-dir "$CNSMO_STATE_DIR" || true
}

# cnsmo_set_file KEY FILE: set this instance's parameter KEY to the content of FILE. A value the
# parameter store cannot hold (over 4096 characters) aborts the run with a message naming KEY:
# nothing is applied, since the role has not started.
cnsmo_set_file() {
  key=$1 file=$2
  if [ ! -r "$file" ]; then
    ss-abort "cnsmo agent on ${SLIPSTREAM_NODE_INSTANCE_NAME:-$(hostname)}: $key: cannot read $file"
    exit 1
  fi
  n=$(wc -m <"$file" | tr -d ' ')
  if [ "$n" -gt 4096 ]; then
    ss-abort "cnsmo agent on ${SLIPSTREAM_NODE_INSTANCE_NAME:-$(hostname)}: $key: $file is $n characters, over the 4096-character limit of a parameter value (use fewer rules or wider ranges)"
    exit 1
  fi
  ss-set "$key" "$(cat "$file")"
}

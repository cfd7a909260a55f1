#!/bin/sh
# Shared by the cnsmo recipes: install cnsmo-role and its ss-* links, start a role in the background.
# Sourced, not run. Variables:
#   CNSMO_ROLE_URL   where to download cnsmo-role from when it is not installed (optional)
#   CNSMO_BIN_DIR    where cnsmo-role is or goes (default /opt/cnsmo/bin)
#   CNSMO_WIREGUARD_URL where to download wireguard-go from when it is not beside cnsmo-role
#                    (optional: only the wireguard engine with --driver exec and no kernel WireGuard)
#   CNSMO_LINK_DIR   where the ss-* links go when the image has no SlipStream client (default /usr/local/bin)
#   CNSMO_STATE_DIR  the role's state, logs and pid file (default /var/lib/cnsmo)
#   CNSMO_WAIT       seconds to wait for net.services.enabled (default 1800; 0 = forever)
#   CNSMO_FW_RULES_FILE  (application VMs) a file whose content becomes this VM's firewall rules
#   CNSMO_UNIT_DIR   where the cnsmo-role.service unit goes (default /etc/systemd/system)
set -eu
CNSMO_BIN_DIR=${CNSMO_BIN_DIR:-/opt/cnsmo/bin}
CNSMO_LINK_DIR=${CNSMO_LINK_DIR:-/usr/local/bin}
CNSMO_STATE_DIR=${CNSMO_STATE_DIR:-/var/lib/cnsmo}
CNSMO_WAIT=${CNSMO_WAIT:-1800}
CNSMO_UNIT_DIR=${CNSMO_UNIT_DIR:-/etc/systemd/system}

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
  # wireguard-go (vpn.engine=wireguard with --driver exec on a VM without kernel WireGuard): beside
  # cnsmo-role, where the role looks for it first; downloaded when CNSMO_WIREGUARD_URL is set.
  if [ ! -x "$CNSMO_BIN_DIR/wireguard-go" ] && [ -n "${CNSMO_WIREGUARD_URL:-}" ]; then
    curl -fsSL -o "$CNSMO_BIN_DIR/wireguard-go.tmp" "$CNSMO_WIREGUARD_URL"
    chmod 0755 "$CNSMO_BIN_DIR/wireguard-go.tmp"
    mv "$CNSMO_BIN_DIR/wireguard-go.tmp" "$CNSMO_BIN_DIR/wireguard-go"
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

# cnsmo_supervised: whether this VM has a service manager that starts units at boot: systemd, or
# the stand-in of the simulated VMs (it marks itself with /run/cnsmo-init).
cnsmo_supervised() {
  [ -d /run/systemd/system ] || [ -e /run/cnsmo-init ]
}

# cnsmo_unit ROLE: write cnsmo-role.service, which starts `cnsmo-role ROLE` at boot and again
# after a crash (not after a clean stop, a usage error, a refused login or an aborted run), and the environment
# it runs with (this recipe's SLIPSTREAM_* context and CNSMO_* settings, mode 0600).
cnsmo_unit() {
  role=$1
  mkdir -p "$CNSMO_STATE_DIR" "$CNSMO_UNIT_DIR"
  envfile="$CNSMO_STATE_DIR/role.env"
  ( umask 077
    : >"$envfile.tmp"
    # The context the recipe runs with (SLIPSTREAM_*, CNSMO_*, and HOME, where a slipstream.context
    # may be). A value with a quote, backslash, $ or ` cannot be written safely for both systemd and
    # sh: it is left out, and said so (the role then finds it in slipstream.context).
    env | grep -E '^((SLIPSTREAM|CNSMO)_[A-Z0-9_]*|HOME)=' | while IFS= read -r kv; do
      case "$kv" in
        *[\'\"\\\$\`]*) echo "cnsmo: ${kv%%=*} not written to $envfile (it holds a quote, backslash, \$ or \`)" >&2 ;;
        *) printf "%s='%s'\n" "${kv%%=*}" "${kv#*=}" >>"$envfile.tmp" ;;
      esac
    done
    mv "$envfile.tmp" "$envfile" )
  cat >"$CNSMO_UNIT_DIR/cnsmo-role.service.tmp" <<UNIT
# Written by the cnsmo recipes (recipes/lib.sh): the network services of this VM.
[Unit]
Description=cnsmo network services (cnsmo-role $role)
After=network-online.target docker.service
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=$envfile
WorkingDirectory=$(pwd)
ExecStart=$CNSMO_BIN_DIR/cnsmo-role $role --state-dir $CNSMO_STATE_DIR
Restart=on-failure
RestartSec=2
RestartPreventExitStatus=2 6 7 8
StandardOutput=append:$CNSMO_STATE_DIR/role.log
StandardError=append:$CNSMO_STATE_DIR/role.log

[Install]
WantedBy=multi-user.target
UNIT
  mv "$CNSMO_UNIT_DIR/cnsmo-role.service.tmp" "$CNSMO_UNIT_DIR/cnsmo-role.service"
}

# cnsmo_start ROLE: start `cnsmo-role ROLE`, unless it already runs. Whether a role runs is decided
# by its lock (`cnsmo-role status`), never by a pid file alone: after a crash or a reboot role.pid
# may name any process. Where the VM has a service manager the role runs as cnsmo-role.service,
# so that it comes back by itself after a reboot or a crash; elsewhere it runs in the background.
cnsmo_start() {
  role=$1
  if st=$("$CNSMO_BIN_DIR/cnsmo-role" status --state-dir "$CNSMO_STATE_DIR"); then
    echo "cnsmo: $role already $st"
    return 0
  fi
  if cnsmo_supervised; then
    cnsmo_unit "$role"
    if [ -d /run/systemd/system ]; then
      systemctl daemon-reload
      systemctl enable --now cnsmo-role.service
    else
      rm -f /run/cnsmo-init.d/cnsmo-role.pid /run/cnsmo-init.d/cnsmo-role.code # start afresh
      mkdir -p "$CNSMO_UNIT_DIR/multi-user.target.wants"
      ln -sf "$CNSMO_UNIT_DIR/cnsmo-role.service" "$CNSMO_UNIT_DIR/multi-user.target.wants/cnsmo-role.service"
    fi
    echo "cnsmo: $role runs as cnsmo-role.service (started at boot, again after a crash), log in $CNSMO_STATE_DIR/role.log"
    return 0
  fi
  nohup "$CNSMO_BIN_DIR/cnsmo-role" "$role" --state-dir "$CNSMO_STATE_DIR" >>"$CNSMO_STATE_DIR/role.log" 2>&1 </dev/null &
  echo "cnsmo: started $role (pid $!), log in $CNSMO_STATE_DIR/role.log"
}

# cnsmo_stop: stop the role for good: the unit no longer starts it (at boot or after a crash),
# and the role removes what it created.
cnsmo_stop() {
  if [ -d /run/systemd/system ] && [ -e "$CNSMO_UNIT_DIR/cnsmo-role.service" ]; then
    systemctl disable --now cnsmo-role.service || true
  fi
  rm -f "$CNSMO_UNIT_DIR/multi-user.target.wants/cnsmo-role.service"
  "$CNSMO_BIN_DIR/cnsmo-role" stop --state-dir "$CNSMO_STATE_DIR"
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

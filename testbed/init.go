package testbed

// initScript is PID 1 of the simulated VMs when Options.Init is set: a stand-in for systemd, which
// does not run in these containers. It marks itself with /run/cnsmo-init (the recipes then install
// cnsmo-role.service as on a VM with systemd) and runs the units enabled in
// /etc/systemd/system/multi-user.target.wants the way systemd does for cnsmo's unit: at boot
// (the container's start) and again after a failure, RestartSec later, unless the exit status is 0
// or listed in RestartPreventExitStatus; with the unit's EnvironmentFile and its output appended
// to the StandardOutput file, in its WorkingDirectory. A unit whose link is removed is not started
// again; linked again, it starts afresh.
const initScript = `
state=/run/cnsmo-init.d
rm -rf "$state"; mkdir -p "$state"; : >/run/cnsmo-init
trap 'exit 0' TERM INT
field() { sed -n "s/^$1=//p" "$2" | tail -n 1; }
while :; do
  for link in /etc/systemd/system/multi-user.target.wants/*.service; do
    [ -e "$link" ] || continue
    unit=$(basename "$link" .service)
    pidf="$state/$unit.pid"; code="$state/$unit.code"
    if [ -f "$pidf" ]; then
      [ -f "$code" ] || continue
      case " 0 $(field RestartPreventExitStatus "$link") " in *" $(cat "$code") "*) continue ;; esac
      rm -f "$code"
      rs=$(field RestartSec "$link"); sleep "${rs:-1}"
    fi
    (
      env_file=$(field EnvironmentFile "$link")
      if [ -n "$env_file" ]; then # a missing or broken file fails the unit (restarted), as systemd's
        if ! ( . "$env_file" ) >/dev/null 2>&1; then echo 1 >"$code"; exit 0; fi
        set -a; . "$env_file"; set +a
      fi
      dir=$(field WorkingDirectory "$link"); [ -z "$dir" ] || cd "$dir" || { echo 1 >"$code"; exit 0; }
      log=$(field StandardOutput "$link"); log=${log#append:}
      $(field ExecStart "$link") >>"${log:-/dev/null}" 2>&1 </dev/null
      echo $? >"$code"
    ) &
    echo $! >"$pidf"
  done
  for pidf in "$state"/*.pid; do # a unit disabled (its link removed) starts afresh once enabled again
    [ -e "$pidf" ] || continue
    unit=$(basename "$pidf" .pid)
    [ -e "/etc/systemd/system/multi-user.target.wants/$unit.service" ] || [ ! -f "$state/$unit.code" ] || rm -f "$state/$unit.pid" "$state/$unit.code"
  done
  sleep 1
done
`

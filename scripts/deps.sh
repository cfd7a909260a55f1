#!/usr/bin/env bash
# Installs, idempotently, the Debian packages that `make test`, `make demo` and `make bench` need on
# the host: debootstrap (to build the base image offline), the network functions for the exec
# driver and the baselines (openvpn, haproxy, iptables), the test tools, and docker-compose (the
# Nuvla 2 compose files are checked and one member is started from its file).
set -euo pipefail
pkgs=(debootstrap openvpn haproxy iptables iproute2 tcpdump iperf3 socat curl iputils-ping procps ca-certificates wrk systemd docker-compose)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all Debian packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing ${missing[*]} and not root: install them with apt-get" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"

#!/usr/bin/env bash
# Builds cnsmo's images offline: this engine has no registry, so the base is a Debian minbase made
# with debootstrap from the archive apt on this machine already uses, and `docker import`ed; every
# function image builds FROM it with Debian's packages. Idempotent: an image whose recorded input
# hash (label cnsmo.input-hash) matches its inputs is skipped.
#   usage: images/build.sh [--force] [image...]     (images: base openvpn wireguard fw haproxy vm role)
# The role image (cnsmo-role in a container, for Nuvla 2 members) copies the built binary: build it
# first (make build), or set CNSMO_BIN to the directory that holds it.
set -euo pipefail
cd "$(dirname "$0")"
export DOCKER_BUILDKIT=0
force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
want=("$@")
[ ${#want[@]} -eq 0 ] && want=(base openvpn wireguard fw haproxy vm)

log() { printf 'images: %s\n' "$*" >&2; }

# The Debian archive and suite apt is configured with (deb822 or one-line sources), never hard-coded.
codename() { . /etc/os-release; echo "${VERSION_CODENAME:-bookworm}"; }
debian_mirror() {
  local suite; suite=$(codename)
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      function flush() { if (uri != "" && ok) { print uri; found=1; exit } uri=""; ok=0 }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/ { uri=$2 }
      /^Suites:/ { for (i=2;i<=NF;i++) if ($i==suite) ok=1 }
      END { if (!found) flush() }' "$f"
  done | head -1 | grep . && return 0
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '$1=="deb" { u=$2; s=$3; if ($2 ~ /^\[/) { u=$3; s=$4 } if (s==suite) { print u; exit } }' "$f"
  done | head -1 | grep . && return 0
  return 1
}

label_of() { docker image inspect -f '{{ index .Config.Labels "cnsmo.input-hash" }}' "$1" 2>/dev/null || true; }

build_base() {
  local suite mirror hash
  suite=$(codename)
  mirror=$(debian_mirror) || { log "no Debian archive found in apt's sources for $suite"; exit 1; }
  hash=$( { cat base/packages; echo "$suite $mirror"; } | sha256sum | cut -c1-16)
  if [ $force -eq 0 ] && [ "$(label_of cnsmo/base:$suite)" = "$hash" ]; then
    log "cnsmo/base:$suite is current ($hash)"; return
  fi
  command -v debootstrap >/dev/null || { log "debootstrap missing: run scripts/deps.sh"; exit 1; }
  local root; root=$(mktemp -d /var/tmp/cnsmo-base.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  log "debootstrap $suite from $mirror (a few minutes)"
  local t0=$SECONDS
  debootstrap --variant=minbase --include="$(paste -sd, base/packages)" "$suite" "$root" "$mirror" \
    > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
  rm -f "$root.log"
  echo "deb $mirror $suite main" > "$root/etc/apt/sources.list"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  log "importing cnsmo/base:$suite"
  tar -C "$root" -c . | docker import \
    --change "LABEL cnsmo.input-hash=$hash" --change 'CMD ["/bin/bash"]' \
    --change 'ENV DEBIAN_FRONTEND=noninteractive' - "cnsmo/base:$suite" >/dev/null
  log "cnsmo/base:$suite built in $((SECONDS - t0)) s"
}

# build_fn builds cnsmo/<name> from the directory ctx (default: the image's own directory).
build_fn() {
  local name=$1 ctx=${2:-$1} suite base_id hash
  suite=$(codename)
  base_id=$(docker image inspect -f '{{.Id}}' "cnsmo/base:$suite")
  hash=$( { cat "$ctx"/*; echo "$base_id"; } | sha256sum | cut -c1-16)
  if [ $force -eq 0 ] && [ "$(label_of cnsmo/$name:latest)" = "$hash" ]; then
    log "cnsmo/$name is current ($hash)"; return
  fi
  log "building cnsmo/$name"
  local t0=$SECONDS out
  if ! out=$(docker build --network host --build-arg "BASE=cnsmo/base:$suite" \
      --label "cnsmo.input-hash=$hash" -t "cnsmo/$name:latest" "$ctx" 2>&1); then
    echo "$out" | tail -30 >&2; exit 1
  fi
  log "cnsmo/$name built in $((SECONDS - t0)) s"
}

# build_role builds cnsmo/role from images/role and the built cnsmo-role (its hash is an input).
build_role() {
  local bin=${CNSMO_BIN:-../bin}/cnsmo-role ctx
  [ -x "$bin" ] || { log "role: $bin is missing: run make build first"; exit 1; }
  ctx=$(mktemp -d /var/tmp/cnsmo-role.XXXXXX)
  trap 'rm -rf "$ctx"' RETURN
  [ -x "${bin%/*}/wireguard-go" ] || { log "role: ${bin%/*}/wireguard-go is missing: run make build first"; exit 1; }
  cp role/Dockerfile "$ctx/" && cp "$bin" "$ctx/cnsmo-role" && cp "${bin%/*}/wireguard-go" "$ctx/wireguard-go"
  build_fn role "$ctx"
}

# build_wireguard builds cnsmo/wireguard: wireguard-go from the golang.zx2c4.com/wireguard module
# pinned in go.mod (a tool of the module), built with this project's Go toolchain, offline once the
# module is in the cache (the Go module proxy otherwise).
build_wireguard() {
  local ctx
  command -v go >/dev/null || { log "wireguard: the Go toolchain is missing: run scripts/deps.sh"; exit 1; }
  ctx=$(mktemp -d /var/tmp/cnsmo-wireguard.XXXXXX)
  trap 'rm -rf "$ctx"' RETURN
  (cd .. && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$ctx/wireguard-go" golang.zx2c4.com/wireguard) \
    || { log "wireguard: go build of golang.zx2c4.com/wireguard failed"; exit 1; }
  cp wireguard/Dockerfile "$ctx/"
  build_fn wireguard "$ctx"
}

for img in "${want[@]}"; do
  case $img in
    base) build_base ;;
    role)
      printf '%s\n' "${want[@]}" | grep -qx base || build_base
      build_role ;;
    wireguard)
      printf '%s\n' "${want[@]}" | grep -qx base || build_base
      build_wireguard ;;
    openvpn|fw|haproxy|vm)
      printf '%s\n' "${want[@]}" | grep -qx base || build_base
      build_fn "$img" ;;
    *) log "unknown image $img (known: base openvpn wireguard fw haproxy vm role)"; exit 2 ;;
  esac
done

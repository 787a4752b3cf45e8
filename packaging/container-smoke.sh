#!/usr/bin/env bash
# The container smoke test: the Containerfile's runtime stage, made from
# this checkout's release binaries on a local base (no registry is needed:
# the base is /bin/sh and the shared libraries, taken from this machine),
# run as a server and 3 clients with --net=host on free loopback ports;
# the key is a podman secret, never on a command line; a job on every
# node through `podman exec ... director exec`, its output checked; a
# clean stop (the daemon under its PID 1 init, exit 0); a second client on
# another's volume refused with the message that says what to do;
# everything removed. podman's storage lives in a directory of its own.
#
# Needs podman (and runc where cgroups are v1 or hybrid); skips, saying so
# in one line, where podman cannot run containers at all.
#
# CLIENTS=40 packaging/container-smoke.sh runs the README's "many clients
# on one host" instead of 3 (each client container takes about 10 MB).
# IMAGE_ARCHIVE=FILE tests an image made by a full `podman build` instead
# (`podman save -o FILE localhost/director`): nothing is built.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "container-smoke: $*"; }
if ! command -v podman >/dev/null 2>&1; then
  say "skipped: podman is not installed"
  exit 0
fi

work=$(mktemp -d /tmp/director-smoke.XXXXXX)
run=/tmp/dsr-$$            # podman refuses a long --runroot
pm() { podman --root "$work/storage" --runroot "$run" "$@"; }
clients=${CLIENTS:-3}
cleanup() {
  pm rm -a -f -t 0 >/dev/null 2>&1 || true
  pm volume prune -f >/dev/null 2>&1 || true
  pm secret rm director-smoke-key >/dev/null 2>&1 || true
  pm rmi -a -f >/dev/null 2>&1 || true
  umount "$work/storage/overlay" >/dev/null 2>&1 || true
  rm -rf "$work" "$run"
}
trap cleanup EXIT

# This kind of host: cgroups v1 or hybrid want runc (crun needs v2 here),
# and podman's default ulimits must not exceed the host's hard limits
# (nor, for processes, pid_max: runc was refused past it here).
files=$(ulimit -Hn)
procs=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$procs" = unlimited ] || [ "$procs" -gt "$pid_max" ]; then procs=$pid_max; fi
{
  echo '[containers]'
  echo "default_ulimits = [\"nofile=$files:$files\", \"nproc=$procs:$procs\"]"
  echo '[engine]'
  echo 'cgroup_manager = "cgroupfs"'
  echo 'events_logger = "file"'
  if [ ! -f /sys/fs/cgroup/cgroup.controllers ] && command -v runc >/dev/null 2>&1; then
    echo 'runtime = "runc"'
  fi
} > "$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"

# A podman that answers at all, or skip.
if ! pm info >/dev/null 2>"$work/info.err"; then
  say "skipped: podman cannot run here: $(head -1 "$work/info.err")"
  exit 0
fi

# The Containerfile's runtime stage from this checkout's binaries.
build_image() {
  say "building the release binaries"
  cargo build --release --locked --bins -q

  # The binaries, stripped, with the directories the image gives them.
  bins="$work/bins"
  mkdir -p "$bins/out/usr/local/bin" "$bins/out/var/lib/director/node" "$bins/out/var/cache/director"
  for b in director director-server-systemd director-client-systemd; do
    strip -o "$bins/out/usr/local/bin/$b" "target/release/$b"
  done
  chmod 700 "$bins/out/var/lib/director" "$bins/out/var/lib/director/node" "$bins/out/var/cache/director"
  tar -C "$bins" -cf "$work/bins.tar" out
  pm import -q "$work/bins.tar" localhost/director-smoke-bins >/dev/null

  # A base: /bin/sh and every library it and director load.
  base="$work/base"
  mkdir -p "$base/bin" "$base/etc" "$base/tmp" "$base/run" "$base/var"
  chmod 1777 "$base/tmp"
  ln -s ../run "$base/var/run"
  cp -L /bin/sh "$base/bin/sh"
  for lib in $( (ldd target/release/director; ldd /bin/sh) | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$base$(dirname "$lib")"
    cp -L "$lib" "$base$lib"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$base/etc/passwd"
  echo 'root:x:0:' > "$base/etc/group"
  tar -C "$base" -cf "$work/base.tar" .
  pm import -q "$work/base.tar" localhost/director-smoke-base >/dev/null

  say "building the image (the Containerfile's runtime stage)"
  # That stage as it is, after our binaries in place of the build stage.
  {
    echo 'ARG BASE'
    echo 'FROM localhost/director-smoke-bins AS build'
    sed -n '/^FROM ${BASE} AS runtime$/,$p' Containerfile
  } > "$work/Containerfile.runtime"
  grep -q '^COPY --from=build ' "$work/Containerfile.runtime" \
    || { say "FAILED: no runtime stage found in the Containerfile"; exit 1; }
  pm build -q --build-arg BASE=localhost/director-smoke-base \
    -t "$image" -f "$work/Containerfile.runtime" . >/dev/null
}

image=localhost/director:smoke
if [ -n "${IMAGE_ARCHIVE:-}" ]; then
  image=$(pm load -q -i "$IMAGE_ARCHIVE" | sed -n 's/^Loaded image[^:]*: *//p' | head -1)
  [ -n "$image" ] || { say "FAILED: nothing loaded from $IMAGE_ARCHIVE"; exit 1; }
  say "testing $image from $IMAGE_ARCHIVE"
else
  build_image
fi
say "image: $(pm image inspect --format '{{.Size}}' "$image") bytes"

# Free ports on loopback, and the key as a secret.
read -r p1 p2 p3 < <(python3 -c 'import socket
ss=[socket.socket() for _ in range(3)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
head -c 32 /dev/urandom | base64 | tr -d '\n' | pm secret create director-smoke-key - >/dev/null
common=(--net=host --secret director-smoke-key,type=env,target=DIRECTOR_SHARED_KEY
        --env DIRECTOR_JOB_PORT="$p1" --env DIRECTOR_TRANSFER_PORT="$p2"
        --env DIRECTOR_HEARTBEAT_PORT="$p3" --env DIRECTOR_HEARTBEAT_INTERVAL=1)

started=$SECONDS
pm run -d --name smoke-server --hostname smoke-server "${common[@]}" \
  --env DIRECTOR_MODE=server --env DIRECTOR_BIND_ADDRESS=127.0.0.1 \
  -v smoke-state:/var/lib/director "$image" >/dev/null
for i in $(seq 1 "$clients"); do
  pm run -d --name "smoke-client-$i" --hostname "smoke-client-$i" "${common[@]}" \
    --env DIRECTOR_MODE=client --env DIRECTOR_SERVER_ADDRESS=127.0.0.1 \
    -v "smoke-node-$i:/var/lib/director/node" "$image" >/dev/null
done

cli() { pm exec smoke-server director "$@"; }
deadline=$((SECONDS + 90))
until [ "$(cli manage --list-nodes 2>/dev/null | grep -c ' online')" = "$clients" ]; do
  if [ $SECONDS -ge $deadline ]; then
    say "FAILED: $clients nodes never came online"
    cli manage --list-nodes || true
    for c in smoke-server smoke-client-1; do echo "--- $c"; pm logs "$c" 2>&1 | tail -20; done
    exit 1
  fi
  sleep 0.5
done

out=$(cli exec --verb RUN --wait 'read -r h < /proc/sys/kernel/hostname; echo "smoke-ok-$h"')
for i in $(seq 1 "$clients"); do
  grep -q "stdout | smoke-ok-smoke-client-$i" <<< "$out" || { say "FAILED: no output from smoke-client-$i"; echo "$out"; exit 1; }
done
grep -q ": $clients succeeded" <<< "$out" || { say "FAILED: $out"; exit 1; }
say "$clients clients online in $((SECONDS - started)) s; a job ran on all of them"

# A second client on smoke-client-1's volume is refused, and told why.
if pm run --name smoke-dup --hostname smoke-dup "${common[@]}" \
     --env DIRECTOR_MODE=client --env DIRECTOR_SERVER_ADDRESS=127.0.0.1 \
     -v smoke-node-1:/var/lib/director/node "$image" > "$work/dup.log" 2>&1; then
  say "FAILED: a second client on one volume was let in"; exit 1
fi
grep -q "another container or PID namespace" "$work/dup.log" || { say "FAILED: $(cat "$work/dup.log")"; exit 1; }
say "a second client on a volume in use is refused: $(grep -o 'in use by .*' "$work/dup.log" | cut -c1-60)..."

# podman stop: SIGTERM to PID 1, passed on; the daemon stops cleanly.
last="smoke-client-$clients"
pm stop -t 20 "$last" >/dev/null
code=$(pm inspect --format '{{.State.ExitCode}}' "$last")
[ "$code" = 0 ] || { say "FAILED: the stopped client exited $code"; pm logs "$last" | tail; exit 1; }
# The log is read whole before it is searched: with pipefail, `grep -q`
# leaving at the first match made `podman logs` die of SIGPIPE, and the
# check fail though the line was there.
logs=$(pm logs "$last" 2>&1)
grep -q "received SIGTERM" <<<"$logs" || { say "FAILED: no SIGTERM in the log"; exit 1; }
say "podman stop: the client stopped on SIGTERM, exit 0"
say "passed"

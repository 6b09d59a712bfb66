#!/usr/bin/env bash
# The real container test of the deployment: the project's own deploy/Dockerfile, built by
# `docker-compose build`, and its own deploy/docker-compose.yml, run by `docker-compose up`
# on a Docker engine this script starts and stops itself.
#
#   1. the digits MLP trains across coordinator, 2 shards, evaluator and 2 workers, each in
#      its own container, to the job's target accuracy (read from the run-directory volume);
#   2. with `--scale worker=3`, one worker is cut off its network (`docker network
#      disconnect`): it is declared dead within the heartbeat timeout and the job finishes;
#   3. with deploy/docker-compose.curve.yml (the job's CURVE keys as a compose secret) the job
#      trains again, and a peer without the keys gets no answer.
#
# Needs root on Debian 12 (installs docker.io, docker-compose, debootstrap with apt when
# missing); no registry: the base image is debootstrapped from the configured apt mirror and a
# python:3.11-slim stand-in is built on it. Bounded in time (DOWNPOUR_COMPOSE_TEST_LIMIT
# seconds, default 840), and it leaves nothing behind, pass or fail: every container, network,
# volume and image goes with the engine's private data root, and the engine is stopped.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
COMPOSE_FILE=$HERE/docker-compose.yml
LIMIT=${DOWNPOUR_COMPOSE_TEST_LIMIT:-840}
PROJECT=downpourci$$
W=$(mktemp -d /var/tmp/downpour-compose.XXXXXX)
SOCK=$W/docker.sock
DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker  # the engine's own client, not a stray newer one
export DOCKER_HOST=unix://$SOCK COMPOSE_PROJECT_NAME=$PROJECT COMPOSE_FILE DOWNPOUR_BUILD_NETWORK=host
export DOWNPOUR_JOB=$HERE/job.yaml
LINKS_BEFORE=$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort)
ENGINE=
RESULT=FAILED

exec 3>&2  # the progress lines' own descriptor: a step's redirections never swallow them
say() { printf '[test_compose %4ds] %s\n' "$SECONDS" "$*" >&3; }
fail() { say "FAIL: $*"; exit 1; }
# Long steps run in the background and are waited for: bash runs a signal's trap (and so the
# cleanup) only between commands, and `wait` is one it can interrupt.
bounded() { local limit=$1; shift; timeout "$limit" "$@" <&0 & wait $!; }
# (The cleanup polls instead: a `wait` inside a trap that interrupted a `wait` can hang bash.)
gone() { local _; for _ in $(seq "$(( $2 * 5 ))"); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done; return 1; }
compose() { bounded "${COMPOSE_TIMEOUT:-300}" docker-compose --ansi never "$@" 2>>"$W/compose.log"; }

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    set +e
    local job
    for job in $(jobs -p); do  # the watchdog and an interrupted step; the engine goes last
        [ "$job" = "$ENGINE" ] || { kill "$job" 2>/dev/null; gone "$job" 10; }
    done
    if [ "$RESULT" != PASSED ] && [ -S "$SOCK" ]; then
        say "docker-compose's own messages (tail):"
        tail -15 "$W/compose.log" 2>/dev/null | sed 's/^/    /'
        say "logs of the last run (tail):"
        timeout 60 docker-compose --ansi never logs --no-color --tail 25 2>&1 | sed 's/^/    /'
    fi
    say "cleaning up"
    if [ -S "$SOCK" ]; then
        timeout 120 docker-compose --ansi never down -v --rmi all --remove-orphans -t 2 >/dev/null 2>&1
        timeout 60 "$DOCKER" rmi -f python:3.11-slim debian:bookworm-slim >/dev/null 2>&1
    fi
    if [ -f "$W/dockerd.pid" ]; then
        local pid
        pid=$(cat "$W/dockerd.pid")
        kill -TERM "$pid" 2>/dev/null
        gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null
    fi
    # Mounts left under the private roots (dockerd leaves its netns mount even when stopped
    # cleanly; a killed debootstrap leaves proc), then links the engine did not remove.
    grep -o " $W[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    comm -13 <(echo "$LINKS_BEFORE") \
        <(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort) |
        grep -E '^(br-|veth|docker0)' | xargs -r -n1 ip link delete 2>/dev/null
    rm -rf "$W"
    say "$RESULT"
    [ "$RESULT" = PASSED ] && exit 0 || exit $(( code == 0 ? 1 : code ))
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "needs root (it starts a Docker engine)"
(   # the watchdog; its own sleep goes with it when the cleanup stops it
    trap 'kill $nap 2>/dev/null; exit 0' TERM
    sleep "$LIMIT" & nap=$!
    wait $nap && say "time limit of $LIMIT s reached" && kill -TERM $$
) &

install_tools() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v docker-init >/dev/null || missing+=(tini)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]}"
    # Installing docker.io must not start the system's own engine: policy-rc.d says no.
    local policy=/usr/sbin/policy-rc.d created=
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; created=1; fi
    export DEBIAN_FRONTEND=noninteractive
    bounded 600 apt-get update -qq
    bounded 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    local status=$?
    [ -n "$created" ] && rm -f $policy
    return $status
}

start_engine() {
    say "starting dockerd in $W"
    echo '{}' > "$W/daemon.json"
    # No default bridge, no iptables rules and no NAT on the host: the compose network's own
    # bridge is all the containers need, and builds use the host's network.
    dockerd --config-file "$W/daemon.json" --data-root "$W/data" --exec-root "$W/exec" \
        --pidfile "$W/dockerd.pid" -H "unix://$SOCK" --bridge=none --iptables=false \
        --ip-masq=false >"$W/dockerd.log" 2>&1 &
    ENGINE=$!
    for _ in $(seq 150); do
        "$DOCKER" version >/dev/null 2>&1 && return
        sleep 0.2
    done
    tail -20 "$W/dockerd.log"
    fail "dockerd did not answer on $SOCK"
}

build_base_images() {
    local mirror
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' |
        awk '$2 == "bookworm" {print $1; exit}')
    mirror=${mirror:-http://deb.debian.org/debian/}
    say "debootstrap bookworm from $mirror"
    bounded 600 debootstrap --variant=minbase bookworm "$W/rootfs" "$mirror" >"$W/debootstrap.log" 2>&1 ||
        { tail -20 "$W/debootstrap.log"; fail "debootstrap"; }
    # pip inside the builds must trust what the host's pip trusts.
    mkdir -p "$W/rootfs/usr/local/share/ca-certificates" "$W/rootfs/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$W/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$W/rootfs/etc/ssl/certs/" 2>/dev/null || true
    rm -rf "$W"/rootfs/var/cache/apt/archives/*.deb "$W"/rootfs/var/lib/apt/lists/*
    : > "$W/rootfs/etc/resolv.conf"
    tar -C "$W/rootfs" -c . | bounded 300 "$DOCKER" import --change 'CMD ["/bin/bash"]' - debian:bookworm-slim >/dev/null
    rm -rf "$W/rootfs"
    say "building the python:3.11-slim stand-in"
    mkdir -p "$W/python"
    cat > "$W/python/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED
CMD ["python3"]
EOF
    bounded 600 "$DOCKER" build -q --network host -t python:3.11-slim "$W/python" >/dev/null
}

container_of() { compose ps -q "$1" | head -n "${2:-1}" | tail -n 1; }

coordinator_exits_0() {  # waits up to $1 s for the coordinator container to exit with 0
    local code
    bounded "$1" "$DOCKER" wait "$(container_of coordinator)" > "$W/coordinator.exit" ||
        fail "the job did not finish within $1 s"
    code=$(cat "$W/coordinator.exit")
    [ "$code" = 0 ] || fail "the coordinator exited with $code"
}

summary() { cat "$("$DOCKER" volume inspect -f '{{.Mountpoint}}' "${PROJECT}_run")/summary.json"; }

check_exit_codes() {  # every container but those named in $1 exited 0
    local cid name code
    for cid in $(compose ps -q); do
        name=$("$DOCKER" inspect -f '{{.Name}}' "$cid")
        code=$("$DOCKER" inspect -f '{{.State.ExitCode}} {{.State.Running}}' "$cid")
        case " ${1:-} " in *" $cid "*) continue ;; esac
        [ "$code" = "0 false" ] || fail "container $name: exit code/running = $code"
    done
}

status_json() {
    "$DOCKER" exec "$(container_of coordinator)" downpour status tcp://127.0.0.1:5555 --json 2>/dev/null
}

healthcheck_passes() {  # runs the image's own HEALTHCHECK command in container $1, now
    local test
    test=$("$DOCKER" inspect -f '{{index .Config.Healthcheck.Test 1}}' "$1")
    say "healthcheck in ${1:0:12}: $test"
    bounded 30 "$DOCKER" exec "$1" sh -c "$test"
}

run_training() {
    say "run 1: docker-compose up (coordinator, 2 shards, evaluator, 2 workers)"
    compose up -d >/dev/null || fail "docker-compose up"
    [ "$(compose ps -q | wc -l)" = 6 ] || fail "expected 6 containers, got $(compose ps -q | wc -l)"
    coordinator_exits_0 240
    sleep 2  # the other roles leave right after the coordinator's last reply
    check_exit_codes
    compose logs --no-color coordinator > "$W/coordinator.log"
    summary | python3 "$HERE/multihost/check_summary.py" --target --shards-not-loopback "$W/coordinator.log" ||
        fail "run 1 summary"
    compose down -v -t 2 >/dev/null
}

run_disconnect() {
    say "run 2: --scale worker=3, then one worker cut off its network"
    sed -e 's/^  steps: .*/  steps: 4000/' -e 's/^  heartbeat_timeout: .*/  heartbeat_timeout: 3.0/' \
        "$HERE/job.yaml" > "$W/job-long.yaml"
    export DOWNPOUR_JOB=$W/job-long.yaml
    compose up -d --scale worker=3 >/dev/null || fail "docker-compose up --scale worker=3"
    [ "$(compose ps -q worker | wc -l)" = 3 ] || fail "expected 3 worker containers"
    local victim rank= t
    victim=$(container_of worker 3)
    for t in $(seq 120); do
        if status_json | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(not (s["state"] == "running" and sum(n["role"] == "worker" and n["stats"].get("clock", 0) > 0 for n in s["nodes"]) == 3))'; then
            rank=$("$DOCKER" logs "$victim" 2>&1 | grep -o 'worker-[0-9][0-9]*' | head -n 1)
            break
        fi
        sleep 1
    done
    [ -n "$rank" ] || fail "3 workers never trained together"
    healthcheck_passes "$victim" || fail "the image's HEALTHCHECK fails in a running worker"
    say "disconnecting $rank (container ${victim:0:12}) from ${PROJECT}_downpour"
    "$DOCKER" network disconnect "${PROJECT}_downpour" "$victim"
    coordinator_exits_0 240
    sleep 2
    check_exit_codes "$victim"
    summary | python3 "$HERE/multihost/check_summary.py" --target --workers 3 --dead "$rank" --timeout 3.0 ||
        fail "run 2 summary"
}

run_curve() {
    say "run 3: CURVE, the job's keys handed to every container as a compose secret"
    compose down -v -t 2 >/dev/null
    python3 -P -m downpour keys "$W/keys" >/dev/null || fail "downpour keys"
    chown -R 10001 "$W/keys"  # the image runs as uid 10001; the secrets stay 0600
    export DOWNPOUR_KEYS_DIR=$W/keys DOWNPOUR_JOB=$HERE/job.yaml
    export COMPOSE_FILE=$HERE/docker-compose.yml:$HERE/docker-compose.curve.yml
    compose up -d >/dev/null || fail "docker-compose up with CURVE"
    if bounded 30 "$DOCKER" exec -e DOWNPOUR_KEYS= "$(container_of coordinator)" \
            downpour status tcp://127.0.0.1:5555 >/dev/null 2>&1; then
        fail "a status request without the job's keys was answered"
    fi
    say "a peer without the keys got no answer"
    coordinator_exits_0 240
    sleep 2
    check_exit_codes
    summary | python3 "$HERE/multihost/check_summary.py" --target || fail "run 3 summary"
}

install_tools
say "docker-compose config (validates deploy/docker-compose.yml)"
compose config -q || fail "docker-compose config"
start_engine
build_base_images
say "docker-compose build (deploy/Dockerfile)"
COMPOSE_TIMEOUT=600 compose build >"$W/build.log" || { tail -30 "$W/build.log"; fail "docker-compose build"; }
run_training
run_disconnect
run_curve
RESULT=PASSED

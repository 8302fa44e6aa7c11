#!/usr/bin/env bash
# Docker for the `docker`-marked tests: install Debian's docker.io and docker-registry when missing, start dockerd
# and a registry on 127.0.0.1:5000, build the sim test image and push it there (then remove it locally, so the
# tests pull it for real). Idempotent; run as root. Exits non-zero when no engine can be had.
#
#   .ci/setup-docker.sh            # prints the image name on its last line
#   SGLANG_TUNE_TEST_IMAGE=...     # overrides the image name (default 127.0.0.1:5000/sglang-tune-sim:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
IMAGE=${SGLANG_TUNE_TEST_IMAGE:-127.0.0.1:5000/sglang-tune-sim:latest}
BASE=sglang-tune-base:latest
LOGDIR=${SGLANG_TUNE_DOCKER_LOGDIR:-/var/log}
PY=${PYTHON:-python3}

say() { echo "setup-docker: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

http_ok() {  # http_ok URL -> 0 when it answers 200
  "$PY" - "$1" <<'EOF'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

# 1. packages -------------------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v docker-registry >/dev/null; then
  [ "$(id -u)" = 0 ] || die "dockerd/docker-registry missing and not root: install docker.io and docker-registry"
  say "installing docker.io and docker-registry (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends docker.io docker-registry >/dev/null \
    || die "apt-get install docker.io docker-registry failed"
fi
command -v docker >/dev/null || die "no docker client on PATH after installing docker.io"

# 2. the engine -----------------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "dockerd is not running and this is not root: start it (sudo dockerd &)"
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    say "removing stale /var/run/docker.pid"
    rm -f /var/run/docker.pid
  fi
  say "starting dockerd (log: $LOGDIR/sglang-tune-dockerd.log)"
  nohup dockerd >"$LOGDIR/sglang-tune-dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -20 "$LOGDIR/sglang-tune-dockerd.log" >&2; die "dockerd did not come up"; }
fi
say "engine: $(docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}')"

# 3. the registry on 127.0.0.1:5000 ---------------------------------------------------------------------------
if ! http_ok http://127.0.0.1:5000/v2/; then
  say "starting docker-registry on 127.0.0.1:5000 (log: $LOGDIR/sglang-tune-registry.log)"
  mkdir -p /var/lib/sglang-tune-registry
  nohup docker-registry serve "$REPO/docker/registry.yml" >"$LOGDIR/sglang-tune-registry.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    http_ok http://127.0.0.1:5000/v2/ && break
    sleep 0.5
  done
  http_ok http://127.0.0.1:5000/v2/ || { tail -20 "$LOGDIR/sglang-tune-registry.log" >&2; die "registry did not come up"; }
fi

# 4. the test image -------------------------------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say "building the root filesystem from $("$PY" -c 'import sys; print(sys.base_prefix)')"
"$PY" docker/build_rootfs.py "$WORK/rootfs.tar"
docker import --message "sglang-tune base: host Python + sim deps" "$WORK/rootfs.tar" "$BASE" >/dev/null
mkdir -p "$WORK/ctx"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pytest_sglang_tune | tar -C "$WORK/ctx" -xf -
cp -r docker/sglang "$WORK/ctx/sglang"
rm -rf "$WORK/ctx/sglang/__pycache__"
cp docker/Dockerfile "$WORK/ctx/Dockerfile"
say "building $IMAGE"
# the classic builder: BuildKit needs the buildx plugin, which Debian's docker.io does not ship
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$BASE" -t "$IMAGE" "$WORK/ctx" >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log" >&2; die "docker build failed"; }
docker push "$IMAGE" >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; die "docker push $IMAGE failed"; }
DIGEST=$(docker image inspect --format '{{join .RepoDigests " "}}' "$IMAGE")
# remove it locally (and its base), so the tests exercise a real pull with progress and a digest
docker image rm "$IMAGE" "$BASE" >/dev/null
docker image prune -f >/dev/null
say "pushed $DIGEST"
echo "$IMAGE"

#!/usr/bin/env bash
# Build the Nimbus container image without a registry, then smoke-test it.
#
#   .ci/image.sh            # as root: installs podman, runc, mmdebstrap when missing
#
# 1. A Debian bookworm base (python3, python3-venv, ca-certificates) made by mmdebstrap from
#    this machine's apt sources, imported into podman as localhost/nimbus-base:bookworm (kept
#    for the next run; NIMBUS_IMAGE_FRESH_BASE=1 rebuilds it).
# 2. podman build of the Dockerfile with that base (--build-arg PYTHON_IMAGE); the host's CA
#    bundle is mounted into the build so pip works where TLS is intercepted.
# 3. The image runs `nimbus mta` with a read-only root filesystem, writable tmpfs spool and log
#    mounts (U: owned by the image's non-root user), on free loopback ports (host network):
#    liveness must answer OK and an SMTP message must get 250 and its Reception record.
# Podman settings (CONTAINERS_CONF): runc (crun refuses hybrid cgroups), cgroupfs, and
# default ulimits within this machine's hard limits.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="${NIMBUS_IMAGE_WORKDIR:-/var/tmp/nimbus-image}"
TAG="${NIMBUS_IMAGE_TAG:-localhost/nimbus:test}"
BASE="localhost/nimbus-base:bookworm"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || need+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
if [ "${#need[@]}" -gt 0 ]; then
  echo "image.sh: installing ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
    --no-install-recommends "${need[@]}" uidmap fuse-overlayfs
fi

mkdir -p "$WORK"
# Limits the runtime may set here: nofile up to the shell's soft limit; nproc 4096 (higher
# values were refused with EPERM on a machine like ours, below its hard limit).
nofile=$(ulimit -Sn)
[ "$nofile" = unlimited ] && nofile=65536
nofile=$(( nofile < 65536 ? nofile : 65536 )); nproc=4096
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"

started=$(date +%s)
if [ -n "${NIMBUS_IMAGE_FRESH_BASE:-}" ] || ! podman image exists "$BASE"; then
  echo "image.sh: building the base with mmdebstrap (bookworm, this machine's apt sources)"
  rm -f "$WORK/base.tar"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --format=tar bookworm "$WORK/base.tar"
  podman import --quiet "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
fi

ca=/etc/ssl/certs/ca-certificates.crt
extra=()
if [ -f "$ca" ]; then
  extra=(--volume "$ca:/etc/ssl/certs/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi
echo "image.sh: podman build $TAG (base $BASE)"
podman build --quiet --build-arg PYTHON_IMAGE="$BASE" "${extra[@]}" \
  --tag "$TAG" --file Dockerfile . >/dev/null
echo "image.sh: built $TAG in $(( $(date +%s) - started ))s"

# -- smoke test ------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
smtp=$(free_port); http=$(free_port)
name="nimbus-smoke-$$"
cleanup() { podman rm --force --time 5 "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
podman run --detach --name "$name" --read-only --network host \
  --tmpfs /var/spool/nimbus:rw,U --tmpfs /var/log/nimbus:rw,U --tmpfs /tmp:rw,U \
  --env NIMBUS_SMTP_LISTEN="127.0.0.1:$smtp" --env NIMBUS_HTTP_LISTEN="127.0.0.1:$http" \
  --env NIMBUS_SINK_ENABLED=true --env NIMBUS_SINK_ENDPOINT=127.0.0.1:9 \
  "$TAG" mta >/dev/null
python3 - "$smtp" "$http" <<'PY'
import smtplib, sys, time, urllib.request
smtp, http = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/check-liveness/v1", timeout=2) as r:
            if r.read() == b"OK":
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("image.sh: the container never answered liveness OK")
    time.sleep(0.2)  # the probe period
with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as s:
    code, reply = s.ehlo("smoke.test")
    assert code == 250, (code, reply)
    s.sendmail("smoke@src.test", ["someone@dst.test"], b"Subject: smoke\r\n\r\nhello\r\n")
print("image.sh: liveness OK, SMTP 250")
PY
podman exec "$name" sh -c 'grep -h "\"type\":\"Reception\"" /var/log/nimbus/* | head -1' | grep -q Reception \
  || { echo "image.sh: no Reception record in the container's log"; podman logs "$name" | tail -20; exit 1; }
podman exec "$name" id -u | grep -qx 10001 || { echo "image.sh: not running as uid 10001"; exit 1; }
echo "image.sh: smoke test passed (read-only root, uid 10001, Reception record written)"

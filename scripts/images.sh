#!/usr/bin/env bash
# `make images`: build tcpscope-agent and tcpscope-collector with podman, as root, offline apart
# from Debian's archive and PyPI. Idempotent; a second run reuses the cached base and layers.
#
#   - Installs podman, buildah, runc, debootstrap and containers-common's seccomp profile when
#     missing (CI starts from a clean machine).
#   - Base image: debian:bookworm-slim from a registry when one can be pulled; otherwise one made
#     here with `debootstrap --variant=minbase bookworm` plus the same dpkg path excludes the
#     official slim image has, imported once as localhost/tcpscope-base:bookworm and reused.
#   - This machine's podman quirks (see /work/shared/ENVIRONMENT.md "Containers") are passed on
#     every call, so nobody has to remember them: runc + cgroupfs (crun refuses the cgroup v1/v2
#     hybrid), low ulimits (podman's defaults exceed the host's hard limits), host network for
#     builds, and the host's CA bundle mounted for pip (beside the image's own bundle, not over it:
#     the image installs ca-certificates, whose postinst rewrites that file).
#
# Tags: each image is localhost/NAME:$TAG (what tests/containers runs) and also exactly what the
# chart pulls by default, ghcr.io/tcpscope/NAME:<appVersion of helm/tcpscope/Chart.yaml> (the
# repositories of helm/tcpscope/values.yaml), so a cluster that is given these images (kind load,
# podman save | ctr import, or a push to your registry) runs them with the chart's defaults.
#
# Env: TAG (default dev), DEBIAN_MIRROR, TCPSCOPE_BASE (use this base image, skip pull/debootstrap),
#      TCPSCOPE_PULL_TIMEOUT (seconds to try a registry pull, default 20; 0 = never try).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

TAG=${TAG:-dev}
CHART_REPO=ghcr.io/tcpscope  # helm/tcpscope/values.yaml: agent.image.repository, collector.image.repository
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' helm/tcpscope/Chart.yaml)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/tcpscope-base:bookworm
UPSTREAM_BASE=docker.io/library/debian:bookworm-slim
PULL_TIMEOUT=${TCPSCOPE_PULL_TIMEOUT:-20}

# Keep in sync with tests/support/podman.py (the container test passes the same global flags).
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
ULIMITS=(--ulimit nofile=16384:16384 --ulimit nproc=4096:4096)
CA=/etc/ssl/certs/ca-certificates.crt

DEB_PKGS=(podman buildah runc debootstrap golang-github-containers-common containers-storage ca-certificates)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "images: installing Debian packages: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

t0=$SECONDS

# ---- base image ---------------------------------------------------------------------------------
base=${TCPSCOPE_BASE:-}
if [ -z "$base" ]; then
  if "${PODMAN[@]}" image exists "$UPSTREAM_BASE"; then
    base=$UPSTREAM_BASE
  elif "${PODMAN[@]}" image exists "$LOCAL_BASE"; then
    base=$LOCAL_BASE
  elif [ "$PULL_TIMEOUT" != 0 ] && timeout "$PULL_TIMEOUT" "${PODMAN[@]}" pull -q "$UPSTREAM_BASE" >/dev/null 2>&1; then
    base=$UPSTREAM_BASE
  else
    echo "images: no registry base image; making $LOCAL_BASE with debootstrap (once)"
    root=$(mktemp -d /var/tmp/tcpscope-base.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
    # What the official slim image does: no docs, man pages or locales from later apt installs,
    # and no .deb cache left in layers.
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
           "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
    tar -C "$root" -c . | "${PODMAN[@]}" import --change 'CMD ["bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    base=$LOCAL_BASE
  fi
fi
echo "images: base $base ($((SECONDS - t0)) s)"

# ---- the two images -----------------------------------------------------------------------------
build() {
  local name=$1 file=$2 t=$SECONDS old
  old=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "localhost/$name:$TAG" 2>/dev/null || true)
  "${PODMAN[@]}" build --network host "${ULIMITS[@]}" -v "$CA:/run/host-ca.crt:ro" \
    --build-arg PIP_CERT=/run/host-ca.crt --build-arg "BASE_IMAGE=$base" -f "$file" -t "localhost/$name:$TAG" . >&2
  echo "images: built localhost/$name:$TAG ($((SECONDS - t)) s)"
  # the image this tag replaced (only it: other builds may share this storage); kept if in use
  new=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "localhost/$name:$TAG")
  "${PODMAN[@]}" tag "localhost/$name:$TAG" "$CHART_REPO/$name:$APP_VERSION"  # what the chart pulls
  echo "images: tagged $CHART_REPO/$name:$APP_VERSION (the chart's default image)"
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true
  fi
}
build tcpscope-agent Dockerfile.agent
build tcpscope-collector Dockerfile.collector

for name in tcpscope-agent tcpscope-collector; do
  size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "localhost/$name:$TAG")
  echo "images: localhost/$name:$TAG $((size / 1000000)) MB"
done
echo "images: done in $((SECONDS - t0)) s"

#!/usr/bin/env bash
# One-shot, idempotent setup for a fresh Debian 12 machine (run as root, no stdin needed):
#   - Debian packages: bcc (python3-bpfcc, bpfcc-tools), kernel headers bcc can build against,
#     bpftool, nftables/iproute2/tcpdump for tests and the simulator; prometheus (promtool and a
#     real server for the metrics tests: they start their own) and graphviz (`dot`, service maps);
#   - tracefs mounted at /sys/kernel/tracing;
#   - a venv from Debian's interpreter (it must see Debian's bcc module) with the project installed;
#   - the protobuf/gRPC code generated from proto/.
# The PyPI package called "bcc" is an unrelated project: bcc only ever comes from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

DEB_PKGS=(bpfcc-tools python3-bpfcc python3-venv linux-headers-amd64 bpftool nftables iproute2
          tcpdump make gcc libc6-dev util-linux procps prometheus graphviz)
# `setup.sh --kernels` (make test-kernels): QEMU with its virtiofsd, a static busybox for the guests'
# initramfs, and kmod (depmod for the fetched kernels, modprobe inside the guests)
if [[ ${1:-} == --kernels ]]; then DEB_PKGS+=(qemu-system-x86 busybox-static kmod); fi
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  aptlog=$(mktemp /tmp/tcpscope-setup-apt-XXXXXX.log)
  echo "setup: installing Debian packages: ${missing[*]} (log: $aptlog)"
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$aptlog" 2>&1; then
    cat "$aptlog" >&2
    echo "setup: apt-get failed (log above, also in $aptlog)" >&2
    exit 1
  fi
fi

if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
  mount -t tracefs nodev /sys/kernel/tracing || echo "setup: warning: could not mount tracefs" >&2
fi

# clang-format for `make format` and `make lint` (bpf/): Debian's, unless there is one on PATH already
if ! command -v clang-format >/dev/null; then
  echo "setup: installing Debian's clang-format"
  { apt-get update -q && apt-get install -y -q --no-install-recommends clang-format; } >/dev/null 2>&1 \
    || echo "setup: warning: could not install clang-format (make format and make lint need it)" >&2
fi

VENV=${TCPSCOPE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV from Debian's /usr/bin/python3 (with system site-packages for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.tcpscope-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ sim/pyproject.toml -nt "$stamp" ]; then
  # pip's own chatter (resolver notes, build-backend notices) goes to a log, shown only on failure
  log="$VENV/pip-install.log"
  echo "setup: installing tcpscope, its simulator (sim/) and its dev tools into $VENV (pip; log: $log)"
  if ! { "$VENV/bin/pip" install -q --upgrade pip && "$VENV/bin/pip" install -q -e ".[dev]" -e ./sim; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip install failed (log above, also in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
"$VENV/bin/python" -m scripts.genproto
venv_bin=$(cd "$VENV/bin" && pwd)
echo "setup: done. The commands are in $VENV/bin: run them as $VENV/bin/tcpscope-tail ..., or first"
echo "       export PATH=\"$venv_bin:\$PATH\" (or: source $VENV/bin/activate)"

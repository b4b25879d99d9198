#!/bin/sh
# Init step of the tcpscope agent pod: give bcc a kernel header tree for the running kernel.
#
# bcc compiles its programs against /lib/modules/$(uname -r)/{build,source}. In the pod,
# /lib/modules is a writable emptyDir; the host's /lib/modules and /usr/src are mounted read-only
# under $HOST_ROOT. We link, in order of preference:
#   1. the host's own header tree for this kernel (its build/source links, resolved inside
#      $HOST_ROOT because they are absolute host paths like /usr/src/linux-headers-<rel>);
#   2. the Debian header tree shipped in the image ($FALLBACK_SRC). tcpscope reads tracepoint
#      records by the offsets in tracefs format files and kernel struct offsets from BTF, never
#      from header struct layouts, so headers of another kernel version are harmless for it;
#   3. nothing: bcc then falls back to the kernel's own /sys/kernel/kheaders.tar.xz
#      (CONFIG_IKHEADERS), extracted under /tmp (a writable emptyDir in the pod).
# Needs no capabilities: it only reads world-readable trees and writes into the emptyDir.
set -eu
HOST_ROOT=${HOST_ROOT:-/host}
MODULES_DIR=${MODULES_DIR:-/lib/modules}
FALLBACK_SRC=${FALLBACK_SRC:-/usr/src}
rel=${KERNEL_RELEASE:-$(uname -r)}

# host_path PATH: the path, inside this container, of host path PATH (following symlinks,
# which are host-absolute or relative to their directory), at most 16 levels.
host_path() {
  p="$HOST_ROOT$1"
  n=0
  while [ -L "$p" ] && [ "$n" -lt 16 ]; do
    t=$(readlink "$p")
    case "$t" in
      /*) p="$HOST_ROOT$t" ;;
      *) p="$(dirname "$p")/$t" ;;
    esac
    n=$((n + 1))
  done
  printf '%s\n' "$p"
}

dst="$MODULES_DIR/$rel"
mkdir -p "$dst"
rm -f "$dst/build" "$dst/source"
for d in build source; do
  t=$(host_path "/lib/modules/$rel/$d")
  if [ -d "$t/include" ]; then
    ln -s "$t" "$dst/$d"
  fi
done
if [ -e "$dst/build" ] && [ ! -e "$dst/source" ]; then
  ln -s "$(readlink "$dst/build")" "$dst/source"   # single-tree layouts (Fedora, Arch)
fi
if [ -e "$dst/build" ]; then
  echo "tcpscope: kernel headers for $rel from the host: $(readlink "$dst/build")"
  exit 0
fi

fb=""
for d in "$FALLBACK_SRC"/linux-headers-*; do
  case "$d" in *-common) continue ;; esac
  [ -d "$d/include" ] && fb="$d" && break
done
if [ -n "$fb" ]; then
  ln -s "$fb" "$dst/build"
  common="${fb%-*}-common"
  if [ -d "$common" ]; then ln -s "$common" "$dst/source"; else ln -s "$fb" "$dst/source"; fi
  echo "tcpscope: no host headers for $rel; using the image's $(basename "$fb") (tracepoint layouts come from tracefs, struct offsets from BTF)"
  exit 0
fi
echo "tcpscope: no header tree for $rel on the host or in the image; bcc will try /sys/kernel/kheaders.tar.xz"

#!/usr/bin/env bash
# `make unit`: the fast tier, every test that needs no root, no BPF and no Kafka broker
# (tests/conftest.py marks the others root / slow / broker from what they use).
#
# Started as root (CI, this machine), it drops to uid 65534 first, so a test that needs root but is
# not marked fails here instead of passing unnoticed. A checkout under a 0700 directory (/root) cannot
# be entered by that uid: the checkout is bind-mounted onto a world-readable directory inside a private
# mount namespace (gone with the process), and the tests run there. Extra arguments go to pytest:
#   scripts/unit.sh tests/agent/test_config.py -k env
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TCPSCOPE_VENV:-.venv}
# -p no:cacheprovider: uid 65534 cannot write .pytest_cache into the checkout
# -n auto: pytest-xdist, one worker per CPU
args=(-m "not root and not slow and not broker" -p no:cacheprovider -q -n auto "$@")

if [ "$(id -u)" != 0 ]; then
  exec "$VENV/bin/python" -m pytest "${args[@]}"
fi

top=$(mktemp -d /tmp/tcpscope-unit-XXXXXX)
# the view is an empty directory out here (the bind mount lives only in the namespace)
trap 'rm -rf "$top/home"; rmdir "$top/repo" "$top"' EXIT
chmod 755 "$top"
mkdir "$top/repo" "$top/home"
chown 65534:65534 "$top/home"
# PYTHONPATH: the editable installs point into the checkout's real path, which this uid cannot read;
# the tests' own subprocesses (python -m scripts.broker, ...) find the packages through the view.
# shellcheck disable=SC2016  # expanded by the inner shell
unshare --mount --propagation private /bin/sh -c '
  set -e
  mount --bind "$1" "$2"
  cd "$2"
  shift 2
  exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "$@"
' sh "$PWD" "$top/repo" env HOME="$top/home" PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$top/repo:$top/repo/sim" \
  "$VENV/bin/python" -m pytest "${args[@]}"

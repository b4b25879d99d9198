#!/bin/sh
# Trim an image's venv after `pip install`: what no tcpscope process imports at run time.
#   - pip, setuptools, wheel: nothing is installed at run time (the agent's editable install is
#     a .pth finder that needs neither).
#   - kubernetes/aio plus aiohttp and its stack: the asyncio copy of the Kubernetes client
#     (about 68 MB with bytecode); tcpscope/kube/watch.py uses the synchronous client only.
# Ends by importing what the processes import, so a future kubernetes release that starts needing
# any of these fails the image build, not a pod.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3*/site-packages)
"$venv/bin/python" -m pip uninstall -q -y aiohttp aiohttp-retry aiosignal aiohappyeyeballs \
  frozenlist multidict propcache yarl attrs
rm -rf "$site/kubernetes/aio"
"$venv/bin/python" -m pip uninstall -q -y setuptools wheel pip
"$venv/bin/python" -c "import kubernetes.client, kubernetes.watch, kubernetes.config, grpc, kafka, tcpscope.kube, tcpscope.v1.events_pb2"
# and the image's own process (each image holds one of them: the package graph keeps them apart)
"$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('agent') or u.find_spec('collector')))"

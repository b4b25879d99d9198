"""tcpscope-agent: TCP events from kernel tracepoints, printed or streamed.

Exit codes: 0 done (duration elapsed, SIGINT/SIGTERM, --dump-bpf), 2 cannot run here (not root, no
BPF, no tracefs, no BTF, no kernel headers, a bad flag or variable, a metrics port taken: one line on
stderr saying what and how to fix it), 3 a --duration run that lost events (definite losses, any
stage: the loss line on stderr counts them by reason). A run ended by a signal exits 0 either way: its
losses are in the same line, in the metrics, and in the stream.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from agent.config import AgentConfig, ConfigError
from agent.kernel.probe import KernelSupportError, build_plan
from agent.wiring import build_agent
from tcpscope import tls
from tcpscope.losses import definite, possible, untracked

PROG = "tcpscope-agent"
EXIT_LOST = 3  # a --duration run that lost events
_CAP_SYS_ADMIN, _CAP_BPF, _CAP_PERFMON = 21, 39, 38


def missing_privilege(status_path: str = "/proc/self/status") -> str | None:
    """Why this process cannot load BPF tracing programs, or None: root, or CAP_BPF+CAP_PERFMON, or
    CAP_SYS_ADMIN. Names the missing capabilities (no sudo advice: in a container that is the pod's
    securityContext)."""
    try:
        with open(status_path) as fh:
            cap = next((int(line.split()[1], 16) for line in fh if line.startswith("CapEff:")), 0)
    except OSError:
        cap = 0
    if cap >> _CAP_SYS_ADMIN & 1 or (cap >> _CAP_BPF & 1 and cap >> _CAP_PERFMON & 1):
        return None
    missing = [name for bit, name in ((_CAP_BPF, "CAP_BPF"), (_CAP_PERFMON, "CAP_PERFMON")) if not cap >> bit & 1]
    who = f"not root (uid {os.geteuid()})" if os.geteuid() != 0 else "root without capabilities"
    return (
        f"{who}: loading BPF tracing programs needs root or the capabilities CAP_BPF and CAP_PERFMON "
        f"(CAP_SYS_ADMIN on kernels before 5.8; CAP_SYS_ADMIN also to mount tracefs); "
        f"missing: {', '.join(missing)}"
    )


def check_tls_files(config: AgentConfig) -> str | None:
    """--tls-ca, --tls-cert and --tls-key usable (else the one line to exit with), and a warning for
    each certificate expired or expiring soon (tcpscope/tls.py): named at start, not retried forever."""
    try:
        if config.tls_ca:
            tls.check_ca("--tls-ca", config.tls_ca)
        if config.tls_cert and config.tls_key:
            tls.check_pair("--tls-cert", config.tls_cert, "--tls-key", config.tls_key)
        warnings = tls.expiry_warnings("--tls-cert", config.tls_cert) if config.tls_cert else []
        if config.tls_ca:
            warnings += tls.expiry_warnings("--tls-ca", config.tls_ca)
    except tls.TlsFileError as e:
        return str(e)
    for w in warnings:
        logging.getLogger("agent").warning("%s", w)
    return None


def _fail(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
    return 2


def loss_summary(losses: dict[str, int], events_out: int) -> str:
    """`N events out, lost T (reason=n, ...)`; possible losses (upper bounds, tcpscope/losses.py)
    are listed with the reasons but not added to T."""
    total = sum(definite(losses).values())
    detail = ", ".join(f"{k}={v}" for k, v in sorted(losses.items()))
    maybe = sum(possible(losses).values())
    sockets = sum(untracked(losses).values())
    return (
        f"{PROG}: {events_out} events out, lost {total}"
        + (f" ({detail})" if detail else "")
        + (f"; possibly lost {maybe} more (runs the kernel skipped)" if maybe else "")
        + (f"; {sockets} sockets not tracked (socket map full: their events are missing)" if sockets else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = AgentConfig.from_args(argv)
    except ConfigError as e:
        return _fail(str(e))
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr, format=f"{PROG}: %(levelname)s %(message)s")
    bad_tls = check_tls_files(config)
    if bad_tls:
        return _fail(bad_tls)
    if config.dump_bpf:
        try:
            plan = build_plan(config)
        except KernelSupportError as e:
            return _fail(str(e))
        print(plan.describe())
        return 0
    why = missing_privilege()
    if why:
        return _fail(why)
    try:
        agent = build_agent(config, sys.stdout)
    except (KernelSupportError, ConfigError) as e:
        return _fail(str(e))

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pipeline = agent.pipeline
    print(
        f"{PROG}: attached: {', '.join(tp for _k, tp, _f in agent.plan.attach)} "
        f"({'ring buffer' if agent.plan.use_ringbuf else 'perf buffer'})",
        file=sys.stderr,
        flush=True,
    )
    deadline = None if config.duration is None else time.monotonic() + config.duration
    try:
        pipeline.run(stop, deadline)
        pipeline.shutdown(grace_s=config.drain_grace)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, as other line-oriented tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        agent.source.close()
    losses = pipeline.all_losses()
    flows = agent.source.flow_counters()
    anomalies = agent.source.anomaly_counters()
    if anomalies:
        # not losses either: each anomaly is an event or in an aggregate
        print(
            f"{PROG}: {anomalies.get('anomalies.individual', 0)} anomalies sent as events, "
            f"{anomalies.get('anomalies.aggregated', 0)} counted in the kernel past the budget",
            file=sys.stderr,
            flush=True,
        )
    if flows:
        # not losses: each of these connections is in a flow, or (map_full) reported on its own
        print(
            f"{PROG}: {flows.get('flows.aggregated', 0)} ordinary connections aggregated into flows, "
            f"{flows.get('flows.map_full', 0)} reported individually because the flow map was full",
            file=sys.stderr,
            flush=True,
        )
    # the loss summary is always the last line
    print(loss_summary(losses, pipeline.events_out), file=sys.stderr, flush=True)
    lost: int = sum(definite(losses).values()) + sum(untracked(losses).values())
    if lost and config.duration is not None and not stop.is_set():
        return EXIT_LOST  # the loss line says how many and why
    return 0


if __name__ == "__main__":
    sys.exit(main())

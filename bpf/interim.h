/* Open-connection reports: every flow interval, each open connection reports its progress since its
 * last report (bytes each way, retransmits) and its RTTs.
 *
 * The pass is a raw tracepoint program that is never attached: user space runs it with
 * BPF_PROG_TEST_RUN (raw tracepoints: 5.10+), passing up to PASS_KEYS keys of the socket map as its
 * arguments (agent/kernel/openconn.py snapshots the keys with one batch lookup). Its cost grows with
 * the open sockets per interval and never with packets. (A BPF iterator over the map would need
 * BPF_PROG_TYPE_TRACING, which not every kernel has, and bcc cannot give bpf_for_each_map_elem its
 * callback.)
 *
 * Exactness: a report takes the bytes between the socket's rep_* and its counters now; the CLOSE
 * snapshot exchanges rep_* for the final counts (bpf/lifecycle.h); both use an atomic exchange
 * (BPF_XCHG, 5.12+), so a report racing with the close on another CPU either takes its bytes first
 * or finds the final counts and takes nothing. Interim reports plus the close's remainder equal the
 * lifecycle's totals, to the byte.
 *
 * With AGGREGATE, an ordinary open connection (established, no reset, error or retransmit so far)
 * adds to its key's flow (bpf/flow.h); every other open connection, and every one in `each` mode,
 * is its own EV_OPEN event. */
#ifndef TCPSCOPE_INTERIM_H
#define TCPSCOPE_INTERIM_H

#include "events.h"
#include "sockstate.h"
#include "tcp_defs.h"
#include "maps.h"
#include "kread.h"
#include "counters.h"
#include "emit.h"
#include "flow.h"
#include "connid.h"

#ifdef OPEN_PASS
#define PASS_KEYS 12 /* MAX_BPF_FUNC_ARGS: the most a raw tracepoint's test run passes */

/* What a report takes: the part of `cur` not reported yet. The estimate may dip below an earlier
 * one (bpf/counters.h holds a FIN's byte back): then nothing. Only the pass writes rep_* while the
 * socket is open (one pass at a time), so the value read is the one exchanged unless the close came
 * in between; then the close's final count is returned, and nothing is taken. */
static __always_inline __u64 take_u64(__u64 *rep, __u64 cur)
{
    __u64 seen = *(volatile __u64 *)rep;
    if (cur <= seen)
        return 0;
    __u64 old = __sync_lock_test_and_set(rep, cur);
    return cur > old ? cur - old : 0;
}

/* One report's figures. */
struct progress {
    __u64 tx;
    __u64 rx;
    __u64 connect_ns; /* only in the connection's first report */
    __u32 retrans;
    __u32 srtt_us;
    __u32 min_rtt_us;
};

static __always_inline int open_ordinary(const struct sockstate *st)
{
    return !(st->flags & (F_RST_SENT | F_RST_RECEIVED)) && st->err_report == 0 && st->retransmits == 0;
}

#ifdef AGGREGATE
/* Add an ordinary open connection's report to its key's flow; 0 when the flow map is full. */
static __always_inline int flow_add_open(const struct sockstate *st, const struct progress *p, __u64 now)
{
    int full = 0;
    struct flow_val *v = flow_value(st, &full);
    if (!v)
        return 0;
    __sync_fetch_and_add(&v->open_connections, 1);
    __sync_fetch_and_add(&v->tx_bytes, p->tx);
    __sync_fetch_and_add(&v->rx_bytes, p->rx);
    flow_latency(v, p->srtt_us, p->min_rtt_us, p->connect_ns);
    if (now > v->report_ns)
        v->report_ns = now;
    v->pid = st->pid;
    __builtin_memcpy(v->comm, st->comm, 16);
    return 1;
}
#endif

/* EV_OPEN, built in the ring buffer itself: the pass must not use the per-CPU scratch record, which
 * a tracepoint interrupting it on this CPU may be filling. */
static __always_inline void emit_open(__u64 key, const struct sockstate *st, const struct progress *p,
                                      __u64 now)
{
    struct tcpscope_event *ev = events.ringbuf_reserve(sizeof(struct tcpscope_event));
    if (!ev) {
        count_loss(LOSS_OUTPUT_FULL);
        return;
    }
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->kind = EV_OPEN;
    ev->ts_ns = now;
    event_identity(ev, key, st);
    event_tuple(ev, &st->t);
    ev->duration_ns = now - st->first_ts;
    ev->tx_bytes = p->tx;
    ev->rx_bytes = p->rx;
    ev->retransmits = p->retrans;
    ev->reported_tx = st->rep_tx;
    ev->reported_rx = st->rep_rx;
    ev->reported_retrans = (__u32)st->rep_retrans;
    ev->connect_ns = p->connect_ns;
    ev->srtt_us = p->srtt_us;
    ev->min_rtt_us = p->min_rtt_us;
    ev->state = (__u8)(read_u32((const char *)key + OFF_SKC_STATE) & 0xff);
    ev->open_flags = (st->oflags & O_SEEDED) ? OPEN_SEEDED : 0;
    events.ringbuf_submit(ev, T_RB_NO_WAKEUP); /* the agent reads the ring right after the pass */
}

/* One socket of the pass. Established connections only (not listeners, not handshakes), and not
 * after CLOSE: the lifecycle (or the close's part of a flow) reports the rest. */
static __always_inline void report_open(__u64 key, __u64 now)
{
    if (!key)
        return;
    struct sockstate *st = sockets.lookup(&key);
    if (!st) /* closed since the snapshot */
        return;
    if (!(st->flags & F_ESTABLISHED) || (st->flags & F_CLOSED) ||
        (st->role != ROLE_ACTIVE && st->role != ROLE_PASSIVE))
        return;
    const void *sk = (const void *)key;
    if (!(st->flags & F_TUPLE_FINAL)) {
        /* ESTABLISHED leaves the tuple as the start had it (bpf/state.h handle_established): the
         * report names the socket's own, and keeps it for the next ones (a close racing on another
         * CPU writes the same final tuple) */
        tuple_of_sock(&st->t, sk);
        st->flags |= F_TUPLE_FINAL;
    }
    __u64 tx = 0, rx = 0;
    interim_bytes(sk, st, &tx, &rx);
    struct progress p = {};
    p.tx = take_u64(&st->rep_tx, tx);
    p.rx = take_u64(&st->rep_rx, rx);
    p.retrans = (__u32)take_u64(&st->rep_retrans, st->retransmits);
    if (__sync_lock_test_and_set(&st->connect_taken, 1ULL) == 0)
        p.connect_ns = st->connect_ns;
#ifdef HAS_RTT
    p.srtt_us = srtt_us_of(sk);
    p.min_rtt_us = min_rtt_us_of(sk);
#endif
#ifdef AGGREGATE
    if (open_ordinary(st)) {
        if (flow_add_open(st, &p, now)) {
            count_open(OPENC_AGGREGATED);
            return;
        }
        count_open(OPENC_FLOW_FULL);
    }
#endif
    ensure_isns(sk, st, 1); /* its connection_id (bpf/connid.h) */
    emit_open(key, st, &p, now);
    count_open(OPENC_EVENTS);
}

static __always_inline int handle_open_pass(const __u64 *keys)
{
    __u64 now = bpf_ktime_get_ns();
#pragma unroll
    for (int i = 0; i < PASS_KEYS; i++)
        report_open(keys[i], now);
    return 0;
}
#endif /* OPEN_PASS */

#endif

/* Lifecycle: one record per socket, emitted when the socket is destroyed.
 *
 * Why at tcp:tcp_destroy_sock and not at CLOSE: on close() with SO_LINGER 0 or unread data,
 * __tcp_close() sets TCP_CLOSE *before* tcp_send_active_reset() fires tcp_send_reset, and
 * tcp_done_with_error() (6.11+; tcp_reset/tcp_write_err before) reports the socket error *after*
 * tcp_done() set CLOSE. At CLOSE we snapshot bytes and flags; resets and errors seen afterwards
 * still land in the map; the destroy emits. Kernels without tcp_destroy_sock (before 4.16... it
 * came with 4.17's tcp:tcp_destroy_sock) emit at CLOSE instead. */
#ifndef TCPSCOPE_LIFECYCLE_H
#define TCPSCOPE_LIFECYCLE_H

#include "events.h"
#include "sockstate.h"
#include "tcp_defs.h"
#include "maps.h"
#include "kread.h"
#include "counters.h"
#include "emit.h"
#include "flow.h"
#include "anomaly.h"
#include "state_event.h"
#include "connid.h"

/* Snapshot at the CLOSE transition: application bytes from the sequence-space counters.
 * bytes_received counts the peer's FIN (tcp_fin() also sets SOCK_DONE; FIN_WAIT2->CLOSE alone
 * does not prove a FIN came: close() hands FIN_WAIT2 sockets to the timewait minisock).
 * bytes_acked counts our SYN (active opens that reached ESTABLISHED; a passive child is created
 * after its SYN-ACK was acked) and our FIN once acked (snd_una == write_seq after it was queued).
 * With open-connection reports on, the final counts replace what the reports took, in one exchange
 * each: a report racing with this close on another CPU either took its bytes before (and the close
 * reports the rest) or finds the final counts and takes nothing (bpf/interim.h). The RTTs too. */
struct tcp_counters {
    __u64 acked;
    __u64 received;
    __u32 snd_una;
    __u32 write_seq;
    __u32 rcv_nxt;
    __u32 srtt_us; /* the RTTs (HAS_RTT): microseconds, 0 unknown */
    __u32 min_rtt_us;
};

#if defined(TCP_SPAN_LEN) && defined(TCP_SPAN_RTT)
/* A u32 of tcp_sock at `off`, from the span (agent/kernel/cgen.py sets TCP_SPAN_RTT only when the
 * span covers both RTTs: 6.8+ puts srtt_us among the counters, rtt_min 80 bytes before them). */
static __always_inline __u32 span_u32(const __u8 *span, int off)
{
    __u32 v = 0;
    __builtin_memcpy(&v, span + (off - TCP_SPAN_OFF), 4);
    return v;
}
#endif

/* The counters a CLOSE reads, and the RTTs: one read of the span of tcp_sock that holds them when
 * the plan found one (TCP_SPAN_LEN, agent/kernel/cgen.py; the RTTs from it when it covers both,
 * TCP_SPAN_RTT), else one read each. */
static __always_inline void read_tcp_counters(const void *sk, struct tcp_counters *c)
{
#ifdef TCP_SPAN_LEN
    int zero = 0;
    struct tcp_span *span = tcp_span_buf.lookup(&zero);
    if (span && bpf_probe_read_kernel(span->b, TCP_SPAN_LEN, (const char *)sk + TCP_SPAN_OFF) == 0) {
        __builtin_memcpy(&c->acked, span->b + (OFF_BYTES_ACKED - TCP_SPAN_OFF), 8);
        __builtin_memcpy(&c->received, span->b + (OFF_BYTES_RECEIVED - TCP_SPAN_OFF), 8);
        __builtin_memcpy(&c->snd_una, span->b + (OFF_SND_UNA - TCP_SPAN_OFF), 4);
        __builtin_memcpy(&c->write_seq, span->b + (OFF_WRITE_SEQ - TCP_SPAN_OFF), 4);
        __builtin_memcpy(&c->rcv_nxt, span->b + (OFF_RCV_NXT - TCP_SPAN_OFF), 4);
#if defined(HAS_RTT) && defined(TCP_SPAN_RTT)
        c->srtt_us = srtt_us_from(span_u32(span->b, OFF_SRTT_US));
        c->min_rtt_us = min_rtt_us_from(span_u32(span->b, OFF_RTT_MIN));
#endif
        return;
    }
#endif
    c->acked = read_u64((const char *)sk + OFF_BYTES_ACKED);
    c->received = read_u64((const char *)sk + OFF_BYTES_RECEIVED);
    c->snd_una = read_u32((const char *)sk + OFF_SND_UNA);
    c->write_seq = read_u32((const char *)sk + OFF_WRITE_SEQ);
    c->rcv_nxt = read_u32((const char *)sk + OFF_RCV_NXT);
#ifdef HAS_RTT
    c->srtt_us = srtt_us_of(sk);
    c->min_rtt_us = min_rtt_us_of(sk);
#endif
}

static __always_inline void snapshot_close(const void *sk, struct sockstate *st, int oldstate, __u64 now)
{
    struct tcp_counters c = {};
    read_tcp_counters(sk, &c);
#if defined(HAS_RTT) && defined(TCP_SPAN_LEN) && !defined(TCP_SPAN_RTT)
    /* a span without the RTTs: read them here (inside the span branch, this pushed
     * tp_inet_sock_set_state past the 512-byte BPF stack) */
    c.srtt_us = srtt_us_of(sk);
    c.min_rtt_us = min_rtt_us_of(sk);
#endif
    __u64 acked = c.acked;
    __u64 received = c.received;
    __u32 snd_una = c.snd_una;
    __u32 write_seq = c.write_seq;
    __u64 sk_flags = read_u64((const char *)sk + OFF_SK_FLAGS);
    __s32 sk_err = (__s32)read_u32((const char *)sk + OFF_SK_ERR);

    /* established: CLOSE left from any state past the handshake (also a socket first seen at its
     * CLOSE, older than the agent: bpf/state.h reads ESTABLISHED only when it happens) */
    if (oldstate != TS_SYN_SENT && oldstate != TS_SYN_RECV && oldstate != TS_LISTEN && oldstate != TS_CLOSE)
        st->flags |= F_ESTABLISHED;
    /* our FIN was queued: the socket went through FIN_WAIT1 (then maybe FIN_WAIT2, CLOSING or
     * TIME_WAIT) or LAST_ACK, and CLOSE is left from one of those (bpf/state.h reads no other
     * transition for it) */
    if (oldstate == TS_FIN_WAIT1 || oldstate == TS_FIN_WAIT2 || oldstate == TS_CLOSING ||
        oldstate == TS_LAST_ACK || oldstate == TS_TIME_WAIT)
        st->flags |= F_FIN_QUEUED;
    /* the ISN pair, unless a reset, error or retransmit read it already (bpf/connid.h) */
    if ((st->flags & F_ESTABLISHED) && st->isn_client == 0 && st->isn_server == 0)
        isns_from(st, c.snd_una, c.acked, c.rcv_nxt, c.received);
    if ((sk_flags & (1ULL << SOCK_DONE_BIT)) && received > 0)
        received -= 1;
    if (st->role == ROLE_ACTIVE && (st->flags & F_ESTABLISHED) && acked > 0)
        acked -= 1;
    if ((st->flags & F_FIN_QUEUED) && snd_una == write_seq && acked > 0)
        acked -= 1;
    __u64 tx = acked, rx = received;
    st->tx_bytes = tx;
    st->rx_bytes = rx;
    st->sk_err = sk_err;
    st->last_state = (__u8)oldstate;
    st->close_ts = now;
    st->srtt_us = c.srtt_us;
    st->min_rtt_us = c.min_rtt_us;
    st->flags |= F_CLOSED;
#ifdef OPEN_PASS
    st->close_rep_tx = __sync_lock_test_and_set(&st->rep_tx, tx);
    st->close_rep_rx = __sync_lock_test_and_set(&st->rep_rx, rx);
    st->close_rep_retrans = (__u32)__sync_lock_test_and_set(&st->rep_retrans, (__u64)st->retransmits);
    if (__sync_lock_test_and_set(&st->connect_taken, 1ULL))
        st->oflags |= O_REPORTED_BEFORE;
    if (st->close_rep_tx > tx || st->close_rep_rx > rx)
        count_open(OPENC_OVERSHOOT);
#else
    st->close_rep_tx = st->rep_tx; /* a seeded socket's counters when found */
    st->close_rep_rx = st->rep_rx;
#endif
}

/* Emit the lifecycle of a socket whose CLOSE was seen. Listening sockets (LISTEN->CLOSE) are not
 * connections and get none. */
static __always_inline void emit_lifecycle(void *ctx, __u64 key, const struct sockstate *st)
{
#ifndef ENABLE_LIFECYCLE
    return; /* tracked anyway: resets and errors need the socket map */
#endif
    if (!(st->flags & F_CLOSED) || st->last_state == TS_LISTEN)
        return;
    int ordinary = is_ordinary(st);
#ifdef FLOWS_ON
    if (ordinary && flow_add(st))
        return; /* an ordinary connection, counted in its flow (bpf/flow.h) */
#endif
    struct tcpscope_event *ev = scratch_event();
    if (!ev)
        return;
    ev->kind = EV_LIFECYCLE;
    ev->ts_ns = st->close_ts;
    event_identity(ev, key, st);
    event_tuple(ev, &st->t);
    ev->duration_ns = st->close_ts - st->first_ts;
    ev->tx_bytes = st->tx_bytes;
    ev->rx_bytes = st->rx_bytes;
    ev->new_state = st->last_state;
    ev->err = st->err_report ? st->err_report : st->sk_err;
    if (!ev->err && !(st->flags & F_ESTABLISHED))
        ev->err = st->err_icmp; /* a connect failed by an ICMP that found the socket owned (error.h) */
    ev->reason = st->rst_reason;
    ev->retransmits = st->retransmits;
    ev->reported_tx = st->close_rep_tx;
    ev->reported_rx = st->close_rep_rx;
    ev->reported_retrans = st->close_rep_retrans;
    ev->connect_ns = st->connect_ns;
    ev->srtt_us = st->srtt_us;
    ev->min_rtt_us = st->min_rtt_us;
    ev->open_flags = ((st->oflags & O_SEEDED) ? OPEN_SEEDED : 0) |
                     ((st->oflags & O_REPORTED_BEFORE) ? OPEN_REPORTED_BEFORE : 0);
    /* precedence: reset received, reset sent, error, normal */
    if (st->flags & F_RST_RECEIVED)
        ev->ending = ENDING_RESET_RECEIVED;
    else if (st->flags & F_RST_SENT)
        ev->ending = ENDING_RESET_SENT;
    else if (ev->err != 0)
        ev->ending = ENDING_ERROR;
    else
        ev->ending = ENDING_NORMAL;
    if (ordinary) {
        submit(ctx, ev);
        return;
    }
    /* the rest is an anomaly: an event within the budgets, else in its aggregate (bpf/anomaly.h) */
    __u8 flags = (st->flags & F_ESTABLISHED) ? AK_ESTABLISHED : 0;
    if (st->retransmits)
        flags |= AK_RETRANSMITTED;
    anomaly_submit(ctx, ev, flags);
}

#ifdef HAS_TP_TCP_DESTROY_SOCK
static __always_inline int handle_destroy(void *ctx, const void *sk)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sockets.lookup(&key);
    if (!st)
        return 0;
    flush_first_state(ctx, key, st);
#ifndef HAS_RAW_INET_SK_ERROR_REPORT
    /* Without sock:inet_sk_error_report (5.10 has none), an error set after CLOSE is read from the
     * socket here: close() with SO_LINGER 0 goes through tcp_disconnect(), which sets CLOSE first
     * and sk_err = ECONNRESET after sending the RST. */
    if (!st->sk_err)
        st->sk_err = (__s32)read_u32((const char *)sk + OFF_SK_ERR);
#endif
    emit_lifecycle(ctx, key, st);
    sockets.delete(&key);
    return 0;
}
#endif

#endif

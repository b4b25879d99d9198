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
#include "emit.h"
#include "flow.h"
#include "state_event.h"

/* Snapshot at the CLOSE transition: application bytes from the sequence-space counters.
 * bytes_received counts the peer's FIN (tcp_fin() also sets SOCK_DONE; FIN_WAIT2->CLOSE alone
 * does not prove a FIN came: close() hands FIN_WAIT2 sockets to the timewait minisock).
 * bytes_acked counts our SYN (active opens that reached ESTABLISHED; a passive child is created
 * after its SYN-ACK was acked) and our FIN once acked (snd_una == write_seq after it was queued). */
static __always_inline void snapshot_close(const void *sk, struct sockstate *st, int oldstate, __u64 now)
{
    __u64 acked = read_u64((const char *)sk + OFF_BYTES_ACKED);
    __u64 received = read_u64((const char *)sk + OFF_BYTES_RECEIVED);
    __u32 snd_una = read_u32((const char *)sk + OFF_SND_UNA);
    __u32 write_seq = read_u32((const char *)sk + OFF_WRITE_SEQ);
    __u64 sk_flags = read_u64((const char *)sk + OFF_SK_FLAGS);
    __s32 sk_err = (__s32)read_u32((const char *)sk + OFF_SK_ERR);

    if ((sk_flags & (1ULL << SOCK_DONE_BIT)) && received > 0)
        received -= 1;
    if (st->role == ROLE_ACTIVE && (st->flags & F_ESTABLISHED) && acked > 0)
        acked -= 1;
    if ((st->flags & F_FIN_QUEUED) && snd_una == write_seq && acked > 0)
        acked -= 1;
    st->tx_bytes = acked;
    st->rx_bytes = received;
    st->sk_err = sk_err;
    st->last_state = (__u8)oldstate;
    st->close_ts = now;
    st->flags |= F_CLOSED;
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
#ifdef FLOWS_ON
    if (flow_add(st))
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
    /* precedence: reset received, reset sent, error, normal */
    if (st->flags & F_RST_RECEIVED)
        ev->ending = ENDING_RESET_RECEIVED;
    else if (st->flags & F_RST_SENT)
        ev->ending = ENDING_RESET_SENT;
    else if (ev->err != 0)
        ev->ending = ENDING_ERROR;
    else
        ev->ending = ENDING_NORMAL;
    submit(ctx, ev);
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

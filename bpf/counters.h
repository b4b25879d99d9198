/* A TCP socket's own counters, read with the plan's BTF offsets while the connection is open
 * (application bytes; at CLOSE bpf/lifecycle.h reads them under the socket lock) and the RTTs.
 *
 * bytes_acked and bytes_received (RFC 4898, tcp_sock) count sequence space: bytes_acked our SYN
 * (active opens that reached ESTABLISHED; a passive child is created after its SYN-ACK was acked)
 * and our FIN once acked, bytes_received the peer's FIN. The application bytes leave those out. */
#ifndef TCPSCOPE_COUNTERS_H
#define TCPSCOPE_COUNTERS_H

#include "tcp_defs.h"
#include "events.h"
#include "sockstate.h"
#include "kread.h"

/* What a close adds to what interim reports (or the time before a seeded socket was found) already
 * said: never below zero. */
static __always_inline __u64 unreported(__u64 total, __u64 reported)
{
    return total > reported ? total - reported : 0;
}

#if defined(OFF_SRTT_US) && defined(OFF_RTT_MIN)
#define HAS_RTT 1

/* tcp_sock.srtt_us holds 8 times the smoothed RTT (tcp_rtt_estimator()); TCP_INFO's tcpi_rtt is
 * the same value shifted, so the two agree to the microsecond. 0 before the first sample. */
static __always_inline __u32 srtt_us_from(__u32 raw)
{
    return raw >> 3;
}

static __always_inline __u32 srtt_us_of(const void *sk)
{
    return srtt_us_from(read_u32((const char *)sk + OFF_SRTT_US));
}

/* tcp_sock.rtt_min is a windowed min filter (struct minmax, 4.10+); OFF_RTT_MIN points at its
 * current minimum, s[0].v, which is ~0U until the first sample. */
static __always_inline __u32 min_rtt_us_from(__u32 raw)
{
    return raw == 0xffffffff ? 0 : raw;
}

static __always_inline __u32 min_rtt_us_of(const void *sk)
{
    return min_rtt_us_from(read_u32((const char *)sk + OFF_RTT_MIN));
}
#endif

#ifdef OPEN_PASS
/* While the connection is open, without its lock: a lower bound of the application bytes, never
 * above what the lifecycle will say at CLOSE (the reports and the close must add up exactly).
 *
 * Sent: our FIN is queued only after the state left ESTABLISHED/CLOSE_WAIT (tcp_close_state()
 * before tcp_send_fin()), so with the counter read before the state, a state still before the FIN
 * proves the counter holds no FIN. Past it, the FIN may have been acked: one byte is held back
 * until the next report or the close.
 *
 * Received: tcp_queue_rcv() adds the FIN's skb (or its flag, coalesced) to the tail of the receive
 * queue, then tcp_rcv_nxt_update() counts it in bytes_received, then tcp_fin() sets SOCK_DONE; the
 * application can take the skb off the queue only after that. Reading the counter first, then the
 * tail skb's flags, then SOCK_DONE, a FIN in the counter always shows in one of the two
 * (x86 keeps stores and loads in order; elsewhere a FIN could slip through and count once as
 * OPENC_OVERSHOOT at the close, never twice in the totals). */
static __always_inline int fin_maybe_sent(int state)
{
    return state != TS_ESTABLISHED && state != TS_CLOSE_WAIT;
}

static __always_inline int fin_in_receive_queue(const void *sk)
{
    const char *head = (const char *)sk + OFF_SK_RECEIVE_QUEUE;
    const char *tail = (const char *)read_u64(head + OFF_SKB_HEAD_PREV);
    if (!tail || tail == head)
        return 0;
    __u8 tcp_flags = 0;
    bpf_probe_read_kernel(&tcp_flags, 1, tail + OFF_SKB_TCP_FLAGS);
    return tcp_flags & 0x01; /* TCPHDR_FIN */
}

static __always_inline void interim_bytes(const void *sk, const struct sockstate *st, __u64 *tx, __u64 *rx)
{
    __u64 acked = read_u64((const char *)sk + OFF_BYTES_ACKED);
    __u64 received = read_u64((const char *)sk + OFF_BYTES_RECEIVED);
    int fin_in = fin_in_receive_queue(sk);
    __u64 sk_flags = read_u64((const char *)sk + OFF_SK_FLAGS);
    int state = (int)(read_u32((const char *)sk + OFF_SKC_STATE) & 0xff);

    if (st->role == ROLE_ACTIVE && acked > 0)
        acked -= 1; /* our SYN: only established sockets are reported */
    if (fin_maybe_sent(state) && acked > 0)
        acked -= 1;
    if ((fin_in || (sk_flags & (1ULL << SOCK_DONE_BIT))) && received > 0)
        received -= 1;
    *tx = acked;
    *rx = received;
}
#endif

#endif

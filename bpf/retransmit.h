/* tcp:tcp_retransmit_skb (data retransmits; counted into the lifecycle too) and
 * tcp:tcp_retransmit_synack (fires on the listener: local = the listening side). */
#ifndef TCPSCOPE_RETRANSMIT_H
#define TCPSCOPE_RETRANSMIT_H

#include "events.h"
#include "tcp_defs.h"
#include "sockstate.h"
#include "maps.h"
#include "emit.h"
#include "anomaly.h"
#include "connid.h"
#include "kread.h"

static __always_inline int handle_retransmit(void *ctx, const void *sk, int state, const struct tuple *t)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sockets.lookup(&key);
    if (st) {
        __sync_fetch_and_add(&st->retransmits, 1);
        ensure_isns(sk, st, isns_readable(state));
    }
#ifdef ENABLE_RETRANSMIT
    struct tcpscope_event *ev = begin_event_of(EV_RETRANSMIT, sk, st, 1, t);
    if (!ev)
        return 0;
    ev->state = (__u8)state;
    anomaly_submit(ctx, ev, 0);
#endif
    return 0;
}

#ifdef ENABLE_SYNACK
/* req: the request (half-open connection) whose SYN-ACK was sent again, NULL when the record has no
 * pointer to it. tcp_rtx_synack() fires the tracepoint before inet_rtx_syn_ack() counts the
 * retransmit in req->num_retrans, so 0 there marks the request's first: its handshake timed out
 * once (AK_FIRST_SYNACK, a half-open timeout). */
static __always_inline int handle_synack(void *ctx, const void *listener, const void *req,
                                         const struct tuple *t)
{
    struct tcpscope_event *ev = begin_event(EV_SYNACK, listener, 1, t);
    if (!ev)
        return 0;
    ev->state = TS_SYN_RECV;
    __u8 num_retrans = 0;
    if (req) {
        bpf_probe_read_kernel(&num_retrans, 1, (const char *)req + OFF_REQ_NUM_RETRANS);
        ev->retransmits = (__u32)num_retrans + 1; /* SynAckRetransmit.request_retransmit: 1 = the first */
    }
    anomaly_submit(ctx, ev, (req && num_retrans == 0) ? AK_FIRST_SYNACK : 0);
    return 0;
}
#endif

#endif

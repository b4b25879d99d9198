/* tcp:tcp_retransmit_skb (data retransmits; counted into the lifecycle too) and
 * tcp:tcp_retransmit_synack (fires on the listener: local = the listening side). */
#ifndef TCPSCOPE_RETRANSMIT_H
#define TCPSCOPE_RETRANSMIT_H

#include "events.h"
#include "tcp_defs.h"
#include "sockstate.h"
#include "maps.h"
#include "emit.h"

static __always_inline int handle_retransmit(void *ctx, const void *sk, int state, const struct tuple *t)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sockets.lookup(&key);
    if (st)
        __sync_fetch_and_add(&st->retransmits, 1);
#ifdef ENABLE_RETRANSMIT
    struct tcpscope_event *ev = begin_event(EV_RETRANSMIT, sk, 1, t);
    if (!ev)
        return 0;
    ev->state = (__u8)state;
    submit(ctx, ev);
#endif
    return 0;
}

#ifdef ENABLE_SYNACK
static __always_inline int handle_synack(void *ctx, const void *listener, const struct tuple *t)
{
    struct tcpscope_event *ev = begin_event(EV_SYNACK, listener, 1, t);
    if (!ev)
        return 0;
    ev->state = TS_SYN_RECV;
    submit(ctx, ev);
    return 0;
}
#endif

#endif

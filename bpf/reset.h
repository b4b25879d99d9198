/* tcp:tcp_send_reset and tcp:tcp_receive_reset. Both are recorded on the tracked socket for its
 * lifecycle; the events themselves are compiled in with ENABLE_RESET. */
#ifndef TCPSCOPE_RESET_H
#define TCPSCOPE_RESET_H

#include "events.h"
#include "tcp_defs.h"
#include "sockstate.h"
#include "maps.h"
#include "kread.h"
#include "emit.h"
#include "anomaly.h"
#include "connid.h"

/* sk may be NULL (RST for a closed port) or a timewait/request sock (not a full socket: its
 * cgroup cannot be read); `state` is the record's state field, 0 when there is no socket. */
static __always_inline int handle_send_reset(void *ctx, const void *sk, int state, __u32 reason,
                                             const struct tuple *t)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sk ? sockets.lookup(&key) : 0;
    if (st) {
        st->flags |= F_RST_SENT;
        st->rst_reason = reason;
        ensure_isns(sk, st, isns_readable(state));
    }
#ifdef ENABLE_RESET
    int full = sk && state != TS_TIME_WAIT && state != TS_NEW_SYN_RECV;
    struct tcpscope_event *ev = begin_event_of(EV_RESET_SENT, sk, st, full, t);
    if (!ev)
        return 0;
    ev->state = (__u8)state;
    ev->reason = reason;
    anomaly_submit(ctx, ev, sk ? 0 : AK_NO_SOCKET);
#endif
    return 0;
}

/* tcp_reset(): fires before the socket error and before tcp_done() sets CLOSE */
static __always_inline int handle_receive_reset(void *ctx, const void *sk, const struct tuple *t)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sockets.lookup(&key);
    __u8 state = (__u8)(read_u32((const char *)sk + OFF_SKC_STATE) & 0xff);
    if (st) {
        st->flags |= F_RST_RECEIVED;
        ensure_isns(sk, st, isns_readable(state));
    }
#ifdef ENABLE_RESET
    struct tcpscope_event *ev = begin_event_of(EV_RESET_RECEIVED, sk, st, 1, t);
    if (!ev)
        return 0;
    ev->state = state;
    anomaly_submit(ctx, ev, 0);
#endif
    return 0;
}

#endif

/* sock:inet_sk_error_report. Its tracefs record has no socket pointer (only the tuple and the
 * error), so it is attached as a raw tracepoint (still a tracepoint, 4.17+), whose first argument
 * is the struct sock. Only tracked sockets are reported: the raw argument alone does not say the
 * socket is TCP, and a tracked socket is. */
#ifndef TCPSCOPE_ERROR_H
#define TCPSCOPE_ERROR_H

#include "events.h"
#include "sockstate.h"
#include "maps.h"
#include "kread.h"
#include "emit.h"
#include "anomaly.h"
#include "connid.h"

static __always_inline int handle_error_report(void *ctx, const void *sk)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sockets.lookup(&key);
    if (!st)
        return 0;
    __s32 err = (__s32)read_u32((const char *)sk + OFF_SK_ERR);
    /* tcp_disconnect() calls sk_error_report() on every disconnect, also with no error pending
     * (e.g. a failed connect() whose error the caller already consumed): not an error event */
    if (!err)
        return 0;
    st->err_report = err;
    __u8 state = (__u8)(read_u32((const char *)sk + OFF_SKC_STATE) & 0xff);
    ensure_isns(sk, st, isns_readable(state));
#ifdef ENABLE_ERROR
    /* the tracked tuple, once final; before that (an error in SYN_SENT or on a passive child not
     * yet closed) the socket's own */
    struct tuple own = {};
    int final = st->flags & F_TUPLE_FINAL;
    if (!final)
        tuple_of_sock(&own, sk);
    struct tcpscope_event *ev = begin_event_of(EV_SOCKET_ERROR, sk, st, 1, final ? 0 : &own);
    if (!ev)
        return 0;
    ev->err = err;
    ev->state = state;
    anomaly_submit(ctx, ev, 0);
#endif
    return 0;
}

#endif

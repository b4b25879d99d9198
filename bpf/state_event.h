/* State change events, and the deferred first one of a connection's socket. */
#ifndef TCPSCOPE_STATE_EVENT_H
#define TCPSCOPE_STATE_EVENT_H

#include "events.h"
#include "sockstate.h"
#include "tcp_defs.h"
#include "maps.h"
#include "emit.h"

#ifdef ENABLE_STATE
static __always_inline void emit_state(void *ctx, __u64 key, const struct sockstate *st, int oldstate,
                                       int newstate, __u64 now, __u64 in_old)
{
    struct tcpscope_event *ev = scratch_event();
    if (!ev)
        return;
    ev->kind = EV_STATE;
    ev->ts_ns = now;
    event_identity(ev, key, st);
    event_tuple(ev, &st->t);
    ev->state = (__u8)oldstate;
    ev->new_state = (__u8)newstate;
    ev->duration_ns = in_old;
    submit(ctx, ev);
}
#endif

/* A socket's first change, CLOSE->SYN_SENT (connect) or LISTEN->SYN_RECV (a passive child, still a
 * clone of its listener), comes before its tuple is complete: connect() picks the local port after
 * setting SYN_SENT, and a child gets its own addresses after the clone. Reported as it was, it
 * would carry port 0 or the listener's wildcard address, and a consumer keyed by the connection's
 * 4-tuple (the Kafka partition key) could not match it. So it is held (F_FIRST_PENDING) and
 * emitted at the socket's next state change, or at destroy, with its own time and the tuple
 * known by then. */
static __always_inline void flush_first_state(void *ctx, __u64 key, struct sockstate *st)
{
    if (!(st->flags & F_FIRST_PENDING))
        return;
    st->flags &= ~F_FIRST_PENDING;
#ifdef ENABLE_STATE
    if (st->role == ROLE_ACTIVE)
        emit_state(ctx, key, st, TS_CLOSE, TS_SYN_SENT, st->first_ts, 0);
    else
        emit_state(ctx, key, st, TS_LISTEN, TS_SYN_RECV, st->first_ts, 0);
#endif
}

#endif

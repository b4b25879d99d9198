/* sock:inet_sk_error_report. Its tracefs record has no socket pointer (only the tuple and the
 * error), so it is attached as a raw tracepoint (still a tracepoint, 4.17+), whose first argument
 * is the struct sock. Only tracked sockets are reported: the raw argument alone does not say the
 * socket is TCP, and a tracked socket is. */
#ifndef TCPSCOPE_ERROR_H
#define TCPSCOPE_ERROR_H

#include "events.h"
#include "sockstate.h"
#include "tcp_defs.h"
#include "maps.h"
#include "kread.h"
#include "emit.h"
#include "anomaly.h"
#include "connid.h"

/* The errno of an ICMP error the kernel just queued for a connecting socket, or 0.
 *
 * An ICMP answering a SYN (a port unreachable: what kube-proxy's reject sends for a Service without
 * endpoints) reaches tcp_v4_err(), which since Linux 5.8 (45af29ca761c "tcp: allow traceroute
 * -Mtcp for unpriv users") first queues it on the socket's error queue (ip_icmp_error ->
 * sock_queue_err_skb -> sk_error_report: this tracepoint, with sk_err still 0), then aborts the
 * connect with tcp_done_with_error() only if the socket is not owned by user. It often is: when the
 * SYN leaves through a veth, the router's answer is processed in the softirq that connect() itself
 * runs, under its socket lock (TcpExtLockDroppedIcmps counts it). The error then stays in
 * sk_err_soft alone: no sk_err, no CLOSE. connect() fails with it through SO_ERROR (which returns
 * and clears sk_err_soft; Python's and Go's connects read it that way) and close() takes the socket
 * from SYN_SENT to CLOSE with no error anywhere. The queued entry is the one place left: the newest
 * skb of sk->sk_error_queue (the just-queued one: skb_queue_tail) holds a struct sock_exterr_skb in
 * skb->cb whose ee has the ICMP's origin and errno (ECONNREFUSED for a port unreachable). Seen on
 * 6.18. IPv6 differs: ipv6_icmp_error() queues only with IPV6_RECVERR, nothing fires here, and the
 * connect fails at its SYN's retransmit, whose ICMP finds the socket unowned (sk_err is set then). */
static __always_inline __s32 queued_icmp_errno(const void *sk)
{
    const char *queue = (const char *)sk + OFF_SK_ERROR_QUEUE;
    const char *skb = (const char *)read_u64(queue + OFF_SKB_HEAD_PREV);
    if (!skb || skb == queue) /* an empty queue's head points to itself */
        return 0;
    const char *ee = skb + OFF_SKB_CB + OFF_SERR_EE;
    __u8 origin = read_u8(ee + OFF_EE_ORIGIN);
    if (origin != EE_ORIGIN_ICMP && origin != EE_ORIGIN_ICMP6)
        return 0; /* a timestamp or zerocopy notification: not an error */
    return (__s32)read_u32(ee + OFF_EE_ERRNO);
}

static __always_inline int handle_error_report(void *ctx, const void *sk)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sockets.lookup(&key);
    if (!st)
        return 0;
    __s32 err = (__s32)read_u32((const char *)sk + OFF_SK_ERR);
    __u8 state = (__u8)(read_u32((const char *)sk + OFF_SKC_STATE) & 0xff);
    if (err && err == st->err_icmp && !st->err_report) {
        /* tcp_done_with_error() after the queued ICMP (the socket was not owned): already reported */
        st->err_report = err;
        return 0;
    }
    if (err) {
        st->err_report = err;
    } else if (state == TS_SYN_SENT && !(st->flags & F_ESTABLISHED)) {
        /* an ICMP queued while connecting (queued_icmp_errno): the connect's error unless the
         * socket still establishes (the lifecycle uses it only then: bpf/lifecycle.h) */
        err = queued_icmp_errno(sk);
        if (!err)
            return 0;
        st->err_icmp = err;
    } else {
        /* tcp_disconnect() calls sk_error_report() on every disconnect, also with no error pending
         * (e.g. a failed connect() whose error the caller already consumed): not an error event */
        return 0;
    }
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

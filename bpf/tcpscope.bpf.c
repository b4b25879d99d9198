/* tcpscope: thin tracepoint entry points. Each one turns its tracepoint record into a tuple and
 * calls the handler in the header for its event kind.
 *
 * Decided at load time by agent/kernel/probe.py (the "plan") and rendered by agent/kernel/cgen.py:
 *   struct tp_<name>       one per tracepoint present, laid out from its tracefs format file
 *   HAS_TP_<NAME>          the tracepoint exists on the running kernel
 *   HAS_<NAME>_<FIELD>     the record has that field (formats differ between kernels)
 *   HAS_<NAME>_SOCKADDR    saddr/daddr are struct sockaddr_in6-sized copies (tcp_send_reset 6.10+)
 *   PORT_MATCH(p)          when a port filter is set
 * and passed as -D: OFF_* (BTF offsets), SOCK_DONE_BIT, KN_ID_SIZE, SOCKET_KEY, MAX_SOCKETS,
 * MAX_LISTENERS, USE_RINGBUF/RINGBUF_PAGES, ENABLE_<KIND>, FILTER_*, PROBE_SAMPLE, and for flows
 * (bpf/flow.h) AGGREGATE or SPILL_PER_CPU, MAX_FLOWS. */
#include "events.h"
#include "common.h"
#include "state_event.h"
#include "flow.h"
#include "lifecycle.h"
#include "state.h"
#include "retransmit.h"
#include "reset.h"
#include "error.h"
#include "probe.h"

#define CLASSIC_TUPLE(t, a, fam) \
    tuple_classic(&(t), (fam), (a)->sport, (a)->dport, (a)->saddr, (a)->daddr, (a)->saddr_v6, (a)->daddr_v6)

#ifdef HAS_TP_INET_SOCK_SET_STATE
int tp_inet_sock_set_state(struct tp_inet_sock_set_state *args)
{
    if (args->protocol != T_IPPROTO_TCP)
        return 0;
    struct tuple t = {};
#ifdef HAS_INET_SOCK_SET_STATE_FAMILY
    CLASSIC_TUPLE(t, args, args->family);
#else
    CLASSIC_TUPLE(t, args, guess_family(args->saddr_v6));
#endif
    return handle_set_state(args, (const void *)args->skaddr, args->oldstate, args->newstate, &t);
}
#endif

#ifdef HAS_TP_TCP_DESTROY_SOCK
int tp_tcp_destroy_sock(struct tp_tcp_destroy_sock *args)
{
    return handle_destroy(args, (const void *)args->skaddr);
}
#endif

#ifdef HAS_TP_TCP_RETRANSMIT_SKB
int tp_tcp_retransmit_skb(struct tp_tcp_retransmit_skb *args)
{
    struct tuple t = {};
#ifdef HAS_TCP_RETRANSMIT_SKB_FAMILY
    CLASSIC_TUPLE(t, args, args->family);
#else
    CLASSIC_TUPLE(t, args, guess_family(args->saddr_v6));
#endif
#ifdef HAS_TCP_RETRANSMIT_SKB_STATE
    int state = args->state;
#else
    int state = 0; /* 4.16: no state in the record */
#endif
    return handle_retransmit(args, (const void *)args->skaddr, state, &t);
}
#endif

#if defined(HAS_TP_TCP_RETRANSMIT_SYNACK) && defined(ENABLE_SYNACK)
int tp_tcp_retransmit_synack(struct tp_tcp_retransmit_synack *args)
{
    struct tuple t = {};
#ifdef HAS_TCP_RETRANSMIT_SYNACK_FAMILY
    CLASSIC_TUPLE(t, args, args->family);
#else
    CLASSIC_TUPLE(t, args, guess_family(args->saddr_v6));
#endif
    return handle_synack(args, (const void *)args->skaddr, &t);
}
#endif

#ifdef HAS_TP_TCP_SEND_RESET
int tp_tcp_send_reset(struct tp_tcp_send_reset *args)
{
    struct tuple t = {};
#ifdef HAS_TCP_SEND_RESET_SOCKADDR
    /* 6.10+: sockaddr copies, from the socket or (no full socket) the reversed skb tuple */
    tuple_sockaddr(&t, args->saddr, args->daddr);
#elif defined(HAS_TCP_SEND_RESET_FAMILY)
    CLASSIC_TUPLE(t, args, args->family);
#else
    CLASSIC_TUPLE(t, args, guess_family(args->saddr_v6));
#endif
#ifdef HAS_TCP_SEND_RESET_REASON
    __u32 reason = args->reason;
#else
    __u32 reason = 0;
#endif
#ifdef HAS_TCP_SEND_RESET_STATE
    int state = args->state;
#else
    int state = 0;
#endif
    return handle_send_reset(args, (const void *)args->skaddr, state, reason, &t);
}
#endif

#ifdef HAS_TP_TCP_RECEIVE_RESET
int tp_tcp_receive_reset(struct tp_tcp_receive_reset *args)
{
    struct tuple t = {};
#ifdef HAS_TCP_RECEIVE_RESET_FAMILY
    CLASSIC_TUPLE(t, args, args->family);
#else
    CLASSIC_TUPLE(t, args, guess_family(args->saddr_v6));
#endif
    return handle_receive_reset(args, (const void *)args->skaddr, &t);
}
#endif

#ifdef HAS_RAW_INET_SK_ERROR_REPORT
int raw_inet_sk_error_report(struct bpf_raw_tracepoint_args *ctx)
{
    return handle_error_report(ctx, (const void *)ctx->args[0]);
}
#endif

#if defined(HAS_TP_TCP_PROBE) && defined(ENABLE_PROBE)
int tp_tcp_probe(struct tp_tcp_probe *args)
{
    if (!probe_sampled())
        return 0;
    struct tuple t = {};
    tuple_sockaddr(&t, args->saddr, args->daddr);
#ifdef HAS_TCP_PROBE_SKADDR
    const void *sk = (const void *)args->skaddr;
#else
    const void *sk = 0;
#endif
#ifdef HAS_TCP_PROBE_DATA_LEN
    __u32 len = args->data_len;
#else
    __u32 len = args->length;
#endif
    return handle_probe(args, sk, &t, args->snd_cwnd, args->srtt, args->snd_wnd, len);
}
#endif

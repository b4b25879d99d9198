/* tcpscope: thin tracepoint entry points. Each one turns its tracepoint record into a tuple and
 * calls the handler in the header for its event kind.
 *
 * Prepended at load time, as agent/kernel/probe.py decides (the "plan") and agent/kernel/cgen.py renders:
 *   struct tp_<name>       one per tracepoint present, laid out from its tracefs format file
 *   HAS_TP_<NAME>          the tracepoint exists on the running kernel
 *   HAS_<NAME>_<FIELD>     the record has that field (formats differ between kernels; read with
 *                          bpf/compat.h's IF_HAS and RECORD_TUPLE)
 *   HAS_<NAME>_SOCKADDR    saddr/daddr are struct sockaddr_in6-sized copies (tcp_send_reset 6.10+)
 *   PORT_MATCH(p)          when a port filter is set
 * and passed as -D: OFF_* (BTF offsets), TCP_SPAN_OFF/LEN (when the CLOSE counters lie close),
 * SOCK_DONE_BIT, KN_ID_SIZE, SOCKET_KEY, MAX_SOCKETS,
 * MAX_LISTENERS, USE_RINGBUF/RINGBUF_PAGES, ENABLE_<KIND>, FILTER_*, PROBE_SAMPLE, and for flows
 * (bpf/flow.h) AGGREGATE or SPILL_PER_CPU, MAX_FLOWS; for anomaly budgets (bpf/anomaly.h)
 * ANOMALY_BUDGET, ANOMALY_NODE_PER_CPU, MAX_ANOMALY_KEYS; for open connections (bpf/interim.h,
 * bpf/seed.h) OPEN_PASS, OPEN_SEED and their offsets (OFF_SRTT_US, OFF_RTT_MIN, ...).
 *
 * Every header includes what it uses and compiles on its own after the plan's preamble
 * (tests/agent/kernel/test_bpf_headers.py); agent/kernel/loader.py inlines each one once, where it
 * is first included. */
#include "tcp_defs.h"
#include "tuples.h"
#include "compat.h"
#include "state.h"
#include "lifecycle.h"
#include "retransmit.h"
#include "reset.h"
#include "error.h"
#include "probe.h"
#include "interim.h"
#include "seed.h"

#ifdef HAS_TP_INET_SOCK_SET_STATE
int tp_inet_sock_set_state(struct tp_inet_sock_set_state *args)
{
    if (args->protocol != T_IPPROTO_TCP || !transition_matters(args->newstate))
        return 0;
#ifndef ENABLE_STATE
    /* ESTABLISHED of a tracked socket needs no tuple (bpf/state.h handle_established) */
    if (args->newstate == TS_ESTABLISHED && handle_established((const void *)args->skaddr, args->oldstate))
        return 0;
#endif
    struct tuple t = {};
    RECORD_TUPLE(t, args, INET_SOCK_SET_STATE);
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
    RECORD_TUPLE(t, args, TCP_RETRANSMIT_SKB);
    int state = IF_HAS(HAS_TCP_RETRANSMIT_SKB_STATE, args->state, 0); /* 4.16: no state in the record */
    return handle_retransmit(args, (const void *)args->skaddr, state, &t);
}
#endif

#if defined(HAS_TP_TCP_RETRANSMIT_SYNACK) && defined(ENABLE_SYNACK)
int tp_tcp_retransmit_synack(struct tp_tcp_retransmit_synack *args)
{
    struct tuple t = {};
    RECORD_TUPLE(t, args, TCP_RETRANSMIT_SYNACK);
    const void *req = IF_HAS(HAS_TCP_RETRANSMIT_SYNACK_REQ, (const void *)args->req, 0);
    return handle_synack(args, (const void *)args->skaddr, req, &t);
}
#endif

#ifdef HAS_TP_TCP_SEND_RESET
int tp_tcp_send_reset(struct tp_tcp_send_reset *args)
{
    struct tuple t = {};
#ifdef HAS_TCP_SEND_RESET_SOCKADDR
    /* 6.10+: sockaddr copies, from the socket or (no full socket) the reversed skb tuple */
    tuple_sockaddr(&t, args->saddr, args->daddr);
#else
    RECORD_TUPLE(t, args, TCP_SEND_RESET);
#endif
    __u32 reason = IF_HAS(HAS_TCP_SEND_RESET_REASON, args->reason, 0);
    int state = IF_HAS(HAS_TCP_SEND_RESET_STATE, args->state, 0);
    return handle_send_reset(args, (const void *)args->skaddr, state, reason, &t);
}
#endif

#ifdef HAS_TP_TCP_RECEIVE_RESET
int tp_tcp_receive_reset(struct tp_tcp_receive_reset *args)
{
    struct tuple t = {};
    RECORD_TUPLE(t, args, TCP_RECEIVE_RESET);
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
    const void *sk = IF_HAS(HAS_TCP_PROBE_SKADDR, (const void *)args->skaddr, 0);
    __u32 len = IF_HAS(HAS_TCP_PROBE_DATA_LEN, args->data_len, args->length);
    return handle_probe(args, sk, &t, args->snd_cwnd, args->srtt, args->snd_wnd, len);
}
#endif

/* Never attached: user space runs these with BPF_PROG_TEST_RUN (agent/kernel/openconn.py). */
#ifdef OPEN_PASS
int open_pass(struct bpf_raw_tracepoint_args *ctx)
{
    return handle_open_pass(ctx->args);
}
#endif

#ifdef OPEN_SEED
int open_seed(struct __sk_buff *skb)
{
    return handle_seed(skb);
}
#endif

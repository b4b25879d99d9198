/* The maps every handler shares, the loss counters and the output buffer.
 * Sizes (MAX_SOCKETS, MAX_LISTENERS, RINGBUF_PAGES) and switches (USE_RINGBUF, ENABLE_PROBE) are -D
 * constants from the plan (agent/kernel/probe.py). */
#ifndef TCPSCOPE_MAPS_H
#define TCPSCOPE_MAPS_H

#include "events.h"
#include "sockstate.h"

/* Per-socket state, keyed by the struct sock pointer. Inserted at the first inet_sock_set_state
 * seen for a socket that passes the filters (handle_set_state); deleted at tcp:tcp_destroy_sock
 * (handle_destroy), or at CLOSE when the kernel has no tcp_destroy_sock. When full, the socket is
 * not tracked and LOSS_SOCKET_MAP_FULL counts it: nothing is evicted silently. */
BPF_HASH(sockets, __u64, struct sockstate, MAX_SOCKETS);

/* Owners of listening sockets, keyed by struct listener_key. Inserted at CLOSE->LISTEN (listen(),
 * process context; a second listener of an SO_REUSEPORT group takes the entry over and counts one
 * more ref), deleted when its last listener goes LISTEN->CLOSE. Read at a passive child's
 * LISTEN->SYN_RECV, which runs in softirq where the current task is whoever was interrupted. */
BPF_HASH(listeners, struct listener_key, struct owner, MAX_LISTENERS);

/* Loss counters by reason (LOSS_*), read by user space as kernel.<reason>. */
BPF_PERCPU_ARRAY(losses, __u64, LOSS_NREASONS);

/* One record of scratch space per CPU: the event is built here, then copied out. */
BPF_PERCPU_ARRAY(scratch, struct tcpscope_event, 1);

#ifdef ENABLE_PROBE
/* tcp_probe sampling: one counter per CPU, report one in PROBE_SAMPLE. */
BPF_PERCPU_ARRAY(probe_count, __u64, 1);
#endif

#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

static __always_inline void count_loss(int reason)
{
    __u64 *v = losses.lookup(&reason);
    if (v)
        *v += 1;
}

static __always_inline void submit(void *ctx, struct tcpscope_event *ev)
{
#ifdef USE_RINGBUF
    if (events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
        count_loss(LOSS_OUTPUT_FULL);
#else
    if (events.perf_submit(ctx, ev, sizeof(*ev)) != 0)
        count_loss(LOSS_OUTPUT_FULL);
#endif
}

static __always_inline struct tcpscope_event *scratch_event(void)
{
    int zero = 0;
    struct tcpscope_event *ev = scratch.lookup(&zero);
    if (ev)
        __builtin_memset(ev, 0, sizeof(*ev));
    return ev;
}

#endif

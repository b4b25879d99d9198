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

#ifdef TCP_SPAN_LEN
/* Per CPU: the span of tcp_sock holding the counters a CLOSE reads, read at once (bpf/lifecycle.h). */
struct tcp_span {
    __u8 b[TCP_SPAN_LEN];
};
BPF_PERCPU_ARRAY(tcp_span_buf, struct tcp_span, 1);
#endif

/* One record of scratch space per CPU: the event is built here, then copied out. */
BPF_PERCPU_ARRAY(scratch, struct tcpscope_event, 1);

#ifdef ENABLE_PROBE
/* tcp_probe sampling: one counter per CPU, report one in PROBE_SAMPLE. */
BPF_PERCPU_ARRAY(probe_count, __u64, 1);
#endif

#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Records written on this CPU, to wake the reader on every RINGBUF_WAKE_EVERY-th (see submit()). */
BPF_PERCPU_ARRAY(ring_writes, __u32, 1);
#else
BPF_PERF_OUTPUT(events);
#endif

static __always_inline void count_loss(int reason)
{
    __u64 *v = losses.lookup(&reason);
    if (v)
        *v += 1;
}

#ifdef USE_RINGBUF
/* bpf_ringbuf_output() flags (include/uapi/linux/bpf.h, 5.8+) */
#define T_RB_NO_WAKEUP 1
#define T_RB_FORCE_WAKEUP 2
#ifndef RINGBUF_WAKE_EVERY
#define RINGBUF_WAKE_EVERY 64
#endif

/* Waking the reader is the expensive part of a record: with the default (adaptive) flags the kernel
 * wakes it whenever it had caught up, which at a paced rate is every record, and the wakeup
 * (irq_work, a self-IPI) cost about 6 us per record on the project VM, 30 times the rest of a
 * program run (bench.kernel_profile). So only every RINGBUF_WAKE_EVERY-th record on a CPU wakes it;
 * the reader also consumes after each poll times out (agent/kernel/source.py), so a record that
 * woke nobody waits at most one poll timeout. */
static __always_inline __u64 ring_wake_flag(void)
{
    int zero = 0;
    __u32 *n = ring_writes.lookup(&zero);
    if (!n)
        return 0;
    *n += 1;
    return (*n % RINGBUF_WAKE_EVERY) == 0 ? T_RB_FORCE_WAKEUP : T_RB_NO_WAKEUP;
}
#endif

/* Copy the event out; returns 0 when it went, else counts nothing and returns nonzero (the caller
 * decides: count it as lost, or into an aggregate). */
static __always_inline int try_submit(void *ctx, struct tcpscope_event *ev)
{
#ifdef USE_RINGBUF
    return events.ringbuf_output(ev, sizeof(*ev), ring_wake_flag());
#else
    return events.perf_submit(ctx, ev, sizeof(*ev));
#endif
}

static __always_inline void submit(void *ctx, struct tcpscope_event *ev)
{
    if (try_submit(ctx, ev) != 0)
        count_loss(LOSS_OUTPUT_FULL);
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

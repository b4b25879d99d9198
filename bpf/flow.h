/* In-kernel aggregation of ordinary connections.
 *
 * An ordinary connection reached ESTABLISHED, closed normally (no reset sent or received, no socket
 * error) and had no retransmit. With AGGREGATE (--connections aggregate) every ordinary connection
 * is added to a flow instead of being emitted as a lifecycle; with SPILL_PER_CPU (--connections
 * each) only those beyond SPILL_PER_CPU per second on a CPU are. Every other connection keeps its
 * lifecycle, resets, errors and retransmits as individual events.
 *
 * Two maps that swap: the programs add to the map whose index `flow_ctl[0]` names; user space
 * (agent/kernel/flows.py) flips the index, waits for programs still running on the old map, then
 * reads and clears the old map with batch operations. A flush therefore costs per key, never per
 * connection. A full map never loses a connection: it is emitted as its own lifecycle and counted
 * (FLOWC_MAP_FULL). */
#ifndef TCPSCOPE_FLOW_H
#define TCPSCOPE_FLOW_H

#include "events.h"
#include "sockstate.h"

/* An ordinary connection: established, no reset sent or received, no socket error, no retransmit,
 * and a role (not a socket older than the agent). Everything else is an anomaly (bpf/anomaly.h). */
static __always_inline int is_ordinary(const struct sockstate *st)
{
    return (st->flags & F_ESTABLISHED) && !(st->flags & (F_RST_SENT | F_RST_RECEIVED)) &&
           st->err_report == 0 && st->sk_err == 0 && st->retransmits == 0 &&
           (st->role == ROLE_ACTIVE || st->role == ROLE_PASSIVE);
}

#if defined(AGGREGATE) || defined(SPILL_PER_CPU)
#define FLOWS_ON 1

/* The two flow maps. Inserted by flow_add() at a socket's destroy (or CLOSE on kernels without
 * tcp_destroy_sock); emptied only by user space, at each flush, while the other map is active. */
BPF_HASH(flows0, struct flow_key, struct flow_val, MAX_FLOWS);
BPF_HASH(flows1, struct flow_key, struct flow_val, MAX_FLOWS);
/* flow_maps[i] = flows<i>, set by user space after load */
BPF_ARRAY_OF_MAPS(flow_maps, "flows0", 2);
/* flow_ctl[0]: index of the active flow map, written by user space */
BPF_ARRAY(flow_ctl, __u32, 1);
/* an all-zero flow_val to insert from (too big for the BPF stack); never written */
BPF_ARRAY(flow_zero, struct flow_val, 1);
/* FLOWC_* counters */
BPF_PERCPU_ARRAY(flow_counts, __u64, FLOWC_NCOUNTS);

#ifdef SPILL_PER_CPU
struct spill_window {
    __u64 start;
    __u64 count;
};
/* per CPU: ordinary connections emitted individually in the current one-second window */
BPF_PERCPU_ARRAY(spill_window, struct spill_window, 1);

static __always_inline int over_budget(__u64 now)
{
    int zero = 0;
    struct spill_window *w = spill_window.lookup(&zero);
    if (!w)
        return 0;
    if (now - w->start >= 1000000000ULL) {
        w->start = now;
        w->count = 0;
    }
    w->count += 1;
    return w->count > SPILL_PER_CPU;
}
#endif

static __always_inline void flow_count(int idx)
{
    __u64 *v = flow_counts.lookup(&idx);
    if (v)
        *v += 1;
}

/* floor(log2(v)) for v >= 1 */
static __always_inline __u32 log2_u64(__u64 v)
{
    __u32 r = 0;
    if (v >> 32) {
        v >>= 32;
        r += 32;
    }
    if (v >> 16) {
        v >>= 16;
        r += 16;
    }
    if (v >> 8) {
        v >>= 8;
        r += 8;
    }
    if (v >> 4) {
        v >>= 4;
        r += 4;
    }
    if (v >> 2) {
        v >>= 2;
        r += 2;
    }
    if (v >> 1) {
        r += 1;
    }
    return r;
}

static __always_inline void flow_key_of(struct flow_key *k, const struct sockstate *st)
{
    __builtin_memcpy(k->laddr, st->t.saddr, 16);
    __builtin_memcpy(k->raddr, st->t.daddr, 16);
    k->cgroup_id = st->cgroup_id;
    k->netns = st->netns;
    k->server_port = st->role == ROLE_PASSIVE ? st->t.sport : st->t.dport;
    k->family = st->t.family;
    k->role = st->role;
}

/* Add a closed ordinary socket to the active flow map. Returns 1 when it was aggregated (no
 * lifecycle must be emitted), 0 when the caller emits the lifecycle as usual. */
static __always_inline int flow_add(const struct sockstate *st)
{
    if (!is_ordinary(st))
        return 0;
#ifdef SPILL_PER_CPU
    if (!over_budget(st->close_ts))
        return 0;
#endif
    int zero = 0;
    __u32 *slot = flow_ctl.lookup(&zero);
    int idx = (slot && *slot) ? 1 : 0;
    void *map = flow_maps.lookup(&idx);
    if (!map)
        return 0;
    struct flow_key k = {};
    flow_key_of(&k, st);
    struct flow_val *v = bpf_map_lookup_elem(map, &k);
    if (!v) {
        struct flow_val *zero_val = flow_zero.lookup(&zero);
        if (!zero_val)
            return 0;
        /* BPF_NOEXIST: another CPU may have inserted it meanwhile; then add to that one */
        int err = bpf_map_update_elem(map, &k, zero_val, BPF_NOEXIST);
        v = bpf_map_lookup_elem(map, &k);
        if (!v) {
            if (err != 0)
                flow_count(FLOWC_MAP_FULL);
            return 0;
        }
    }
    __u64 dur = st->close_ts - st->first_ts;
    __u64 us = dur / 1000;
    __u32 b = us < 2 ? 0 : log2_u64(us);
    if (b >= FLOW_BUCKETS)
        b = FLOW_BUCKETS - 1;
    __sync_fetch_and_add(&v->connections, 1);
    __sync_fetch_and_add(&v->tx_bytes, st->tx_bytes);
    __sync_fetch_and_add(&v->rx_bytes, st->rx_bytes);
    __sync_fetch_and_add(&v->duration_sum_ns, dur);
    __sync_fetch_and_add(&v->buckets[b & (FLOW_BUCKETS - 1)], 1);
    /* first/last close and the owner are plain stores: two CPUs closing connections of one key at
     * the same instant may leave either one's value */
    if (v->first_close_ns == 0 || st->close_ts < v->first_close_ns)
        v->first_close_ns = st->close_ts;
    if (st->close_ts > v->last_close_ns)
        v->last_close_ns = st->close_ts;
    v->pid = st->pid;
    __builtin_memcpy(v->comm, st->comm, 16);
    flow_count(FLOWC_AGGREGATED);
    return 1;
}

#endif /* AGGREGATE || SPILL_PER_CPU */

#endif

/* Anomalies past a budget, aggregated in the kernel, exactly.
 *
 * An anomaly is an event about something that went wrong: a lifecycle that is not ordinary (reset,
 * refused, timed out, retransmitted, ...), a reset sent (also from no socket: a closed port) or
 * received, a socket error, a retransmit, a SYN-ACK retransmit. Each has a key: its flow key (local
 * and remote address, server port, cgroup, netns, role) plus its kind and why (state, ending, errno,
 * reset reason, a few flags). Within the budgets an anomaly is sent as its own event, as without
 * this header: the first ANOMALY_BUDGET of a key per interval (0: no per-key limit), and at most
 * ANOMALY_NODE_PER_CPU per second on a CPU (0: no node limit). Past either, or when the buffer has no
 * room, it is counted in its key's aggregate (count, first and last time, bytes and durations for
 * lifecycles), which user space reads every interval beside the exemplars (the ones sent). So an
 * anomaly is an event or in an aggregate, never neither: the aggregate takes what a full buffer would
 * have lost.
 *
 * Two maps that swap, as the flow maps do (bpf/flow.h): programs add to the one `anom_ctl[0]` names;
 * user space (agent/kernel/anomalies.py) flips it, waits for programs still on the old one, reads and
 * clears it with batch operations, and zeroes its key count. A key is inserted at its first anomaly
 * of an interval (also within the budget: it counts the exemplars). Keys are limited to
 * MAX_ANOMALY_KEYS - ANOMALY_RESERVE per interval; past that, anomalies take a coarse key (no remote
 * address, no server port: a scan over many ports or a flood from many addresses folds into a few)
 * from the reserve. With no key at all they are sent as events (ANOMC_NO_KEY), and one that finds the
 * buffer full then is a counted kernel loss (LOSS_OUTPUT_FULL), the only way one is not accounted. */
#ifndef TCPSCOPE_ANOMALY_H
#define TCPSCOPE_ANOMALY_H

#include "events.h"
#include "maps.h"

#if defined(ANOMALY_BUDGET) || defined(ANOMALY_NODE_PER_CPU)
#define ANOMALIES_ON 1
#ifndef ANOMALY_BUDGET
#define ANOMALY_BUDGET 0
#endif
#ifndef ANOMALY_NODE_PER_CPU
#define ANOMALY_NODE_PER_CPU 0
#endif
#ifndef ANOMALY_RESERVE
#define ANOMALY_RESERVE (MAX_ANOMALY_KEYS / 16)
#endif

/* The two anomaly maps. Inserted by anomaly_submit(); emptied only by user space, at each flush,
 * while the other map is active. */
BPF_HASH(anom0, struct anomaly_key, struct anomaly_val, MAX_ANOMALY_KEYS);
BPF_HASH(anom1, struct anomaly_key, struct anomaly_val, MAX_ANOMALY_KEYS);
/* anom_maps[i] = anom<i>, set by user space after load */
BPF_ARRAY_OF_MAPS(anom_maps, "anom0", 2);
/* anom_ctl[0]: index of the active anomaly map, written by user space */
BPF_ARRAY(anom_ctl, __u32, 1);
/* anom_keys[i]: keys inserted into anom<i> since user space last cleared it (it zeroes the entry
 * after draining the map); approximate under races, which the reserve absorbs */
BPF_ARRAY(anom_keys, __u64, 2);
/* an all-zero anomaly_val to insert from; never written */
BPF_ARRAY(anom_zero, struct anomaly_val, 1);
/* ANOMC_* counters */
BPF_PERCPU_ARRAY(anomaly_counts, __u64, ANOMC_NCOUNTS);

#if ANOMALY_NODE_PER_CPU > 0
struct anom_window {
    __u64 start;
    __u64 count;
};
/* per CPU: anomalies sent as events in the current one-second window */
BPF_PERCPU_ARRAY(anom_window, struct anom_window, 1);
#endif

static __always_inline void anomaly_count(int idx)
{
    __u64 *v = anomaly_counts.lookup(&idx);
    if (v)
        *v += 1;
}

/* The key of the event built in `ev` (its identity, tuple and kind-specific fields). */
static __always_inline void anomaly_key_of(struct anomaly_key *k, const struct tcpscope_event *ev, __u8 flags)
{
    __builtin_memcpy(k->laddr, ev->saddr, 16);
    __builtin_memcpy(k->raddr, ev->daddr, 16);
    k->cgroup_id = ev->cgroup_id;
    k->netns = ev->netns;
    k->server_port = ev->role == ROLE_ACTIVE ? ev->dport : ev->sport;
    k->family = ev->family;
    k->kind = ev->kind;
    k->role = ev->role;
    k->flags = flags;
    if (ev->kind == EV_LIFECYCLE) {
        k->state = ev->new_state;
        k->ending = ev->ending;
        k->err = ev->err;
        k->reason = ev->ending == ENDING_RESET_SENT ? ev->reason : 0;
    } else {
        k->state = ev->state;
        k->err = ev->err;
        k->reason = ev->reason;
    }
}

/* Insert the key with a zero value (BPF_NOEXIST: another CPU may have inserted it meanwhile, then
 * that one is used) and count it; returns the entry, or NULL when the map has no room. */
static __always_inline struct anomaly_val *anomaly_insert(void *map, __u64 *keys, struct anomaly_key *k)
{
    int zero = 0;
    struct anomaly_val *zero_val = anom_zero.lookup(&zero);
    if (!zero_val)
        return 0;
    if (bpf_map_update_elem(map, k, zero_val, BPF_NOEXIST) == 0)
        __sync_fetch_and_add(keys, 1);
    return bpf_map_lookup_elem(map, k);
}

/* The entry of the key in the active map: found, or inserted while the map is below its reserve, or
 * (past that) the coarse key's. NULL when neither can be had. */
static __always_inline struct anomaly_val *anomaly_entry(struct anomaly_key *k)
{
    int zero = 0;
    __u32 *slot = anom_ctl.lookup(&zero);
    int idx = (slot && *slot) ? 1 : 0;
    void *map = anom_maps.lookup(&idx);
    __u64 *keys = anom_keys.lookup(&idx);
    if (!map || !keys)
        return 0;
    struct anomaly_val *v = bpf_map_lookup_elem(map, k);
    if (v)
        return v;
    if (*keys < MAX_ANOMALY_KEYS - ANOMALY_RESERVE) {
        v = anomaly_insert(map, keys, k);
        if (v)
            return v;
    }
    __builtin_memset(k->raddr, 0, 16);
    k->server_port = 0;
    k->flags |= AK_COARSE;
    v = bpf_map_lookup_elem(map, k);
    if (!v)
        v = anomaly_insert(map, keys, k);
    if (v)
        anomaly_count(ANOMC_COARSE);
    return v;
}

/* Whether this CPU may still send an anomaly as an event in the current second (and, when `sent`,
 * that one was sent). */
static __always_inline int node_budget_left(__u64 now)
{
#if ANOMALY_NODE_PER_CPU > 0
    int zero = 0;
    struct anom_window *w = anom_window.lookup(&zero);
    if (!w)
        return 1;
    if (now - w->start >= 1000000000ULL) {
        w->start = now;
        w->count = 0;
    }
    return w->count < ANOMALY_NODE_PER_CPU;
#else
    return 1;
#endif
}

static __always_inline void node_budget_used(void)
{
#if ANOMALY_NODE_PER_CPU > 0
    int zero = 0;
    struct anom_window *w = anom_window.lookup(&zero);
    if (w)
        w->count += 1;
#endif
}

static __always_inline void anomaly_aggregate(struct anomaly_val *v, const struct tcpscope_event *ev)
{
    __sync_fetch_and_add(&v->count, 1);
    if (ev->kind == EV_LIFECYCLE) {
        __sync_fetch_and_add(&v->tx_bytes, ev->tx_bytes);
        __sync_fetch_and_add(&v->rx_bytes, ev->rx_bytes);
        __sync_fetch_and_add(&v->duration_sum_ns, ev->duration_ns);
        __sync_fetch_and_add(&v->retransmits, ev->retransmits);
    }
    /* first/last and the owner are plain stores: two CPUs adding to one key at the same instant may
     * leave either one's value */
    if (v->first_ns == 0 || ev->ts_ns < v->first_ns)
        v->first_ns = ev->ts_ns;
    if (ev->ts_ns > v->last_ns)
        v->last_ns = ev->ts_ns;
    v->pid = ev->pid;
    __builtin_memcpy(v->comm, ev->comm, 16);
    anomaly_count(ANOMC_AGGREGATED);
}

/* Send the anomaly built in `ev` as an event within the budgets, else count it in its key's
 * aggregate. The per-key check reads the exemplar count without a fetching atomic (5.12+): two CPUs
 * at one key at the same instant may send one exemplar more than the budget, never lose one. */
static __always_inline void anomaly_submit(void *ctx, struct tcpscope_event *ev, __u8 flags)
{
    struct anomaly_key k = {};
    anomaly_key_of(&k, ev, flags);
    struct anomaly_val *v = anomaly_entry(&k);
    int over_key = ANOMALY_BUDGET > 0 && v && v->exemplars >= ANOMALY_BUDGET;
    int over_node = !over_key && !node_budget_left(ev->ts_ns);
    if (!v) {
        /* no key: an event it must be, budgets or not */
        anomaly_count(ANOMC_NO_KEY);
        if (try_submit(ctx, ev) != 0) {
            count_loss(LOSS_OUTPUT_FULL);
            return;
        }
        node_budget_used();
        anomaly_count(ANOMC_INDIVIDUAL);
        return;
    }
    if (!over_key && !over_node) {
        if (try_submit(ctx, ev) == 0) {
            __sync_fetch_and_add(&v->exemplars, 1);
            node_budget_used();
            anomaly_count(ANOMC_INDIVIDUAL);
            return;
        }
        anomaly_count(ANOMC_OUTPUT_FULL);
    } else {
        anomaly_count(over_key ? ANOMC_OVER_KEY : ANOMC_OVER_NODE);
    }
    anomaly_aggregate(v, ev);
}

#else /* no budgets: every anomaly is its own event */

static __always_inline void anomaly_submit(void *ctx, struct tcpscope_event *ev, __u8 flags)
{
    submit(ctx, ev);
}

#endif /* ANOMALY_BUDGET || ANOMALY_NODE_PER_CPU */

#endif

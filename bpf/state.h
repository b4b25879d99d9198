/* sock:inet_sock_set_state: state changes, socket tracking and attribution. */
#ifndef TCPSCOPE_STATE_H
#define TCPSCOPE_STATE_H

#include "events.h"
#include "tcp_defs.h"
#include "sockstate.h"
#include "maps.h"
#include "kread.h"
#include "counters.h"
#include "filters.h"
#include "state_event.h"
#include "lifecycle.h"
#include "connid.h"

static __always_inline void set_owner_current(struct sockstate *st)
{
    st->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&st->comm, sizeof(st->comm));
}

static __always_inline void listener_key_of(struct listener_key *lk, __u32 netns, const struct tuple *t)
{
    __builtin_memcpy(lk->addr, t->saddr, 16);
    lk->netns = netns;
    lk->port = t->sport;
    lk->family = t->family;
}

/* Connect latency, at a connection's first ESTABLISHED (0 = unknown: a seeded socket, or no RTT
 * offsets in BTF for the server's side).
 * Client: CLOSE->SYN_SENT (connect()) to SYN_SENT->ESTABLISHED (the SYN-ACK processed), SYN
 * retransmits included: what connect() waited.
 * Server: its child socket is made only when the handshake's last ACK arrives (tcp_check_req ->
 * syn_recv_sock: LISTEN->SYN_RECV), so SYN_RECV->ESTABLISHED lasts microseconds. The time from the
 * SYN-ACK to that ACK is the kernel's first RTT sample of the child (tcp_synack_rtt_meas(), from
 * the request's snt_synack; srtt_us = 8 x sample), taken before the child's SYN_RECV->ESTABLISHED
 * (tcp_rcv_state_process): the latency is that sample plus the time in SYN_RECV. A SYN-ACK that was
 * retransmitted gives no sample (Karn): then only the time in SYN_RECV is known, and 0 says so. */
static __always_inline __u64 connect_latency(const void *sk, const struct sockstate *st, int oldstate,
                                             __u64 now)
{
    if (st->oflags & O_SEEDED)
        return 0;
    if (oldstate == TS_SYN_SENT && st->role == ROLE_ACTIVE)
        return now - st->first_ts;
#ifdef HAS_RTT
    if (oldstate == TS_SYN_RECV && st->role == ROLE_PASSIVE) {
        __u32 sample = srtt_us_of(sk);
        return sample ? (now - st->first_ts) + (__u64)sample * 1000 : 0;
    }
#endif
    return 0;
}

/* A socket first seen mid-life: open before the agent and not found at start-up (no seeding, or
 * missed). With open-connection reports it counts from now, as a seeded socket does (bpf/seed.h):
 * an earlier agent may have reported its bytes until it stopped, and its lifecycle must not count
 * them again. Its role stays unknown (so it is never reported open), and so does its connect
 * latency. Without the reports nobody reported it before its close: it keeps counting it whole. */
static __always_inline void first_seen_mid_life(const void *sk, struct sockstate *st)
{
#ifdef OPEN_PASS
    st->oflags |= O_SEEDED;
    st->connect_taken = 1;
    interim_bytes(sk, st, &st->rep_tx, &st->rep_rx);
#endif
}

/* listen() runs in the owner's process context: remember the owner for passive children. */
static __always_inline void remember_listener(const struct sockstate *st)
{
    struct listener_key lk = {};
    listener_key_of(&lk, st->netns, &st->t);
    struct owner *cur = listeners.lookup(&lk);
    if (cur) { /* another listener of an SO_REUSEPORT group: the newest owner speaks for it */
        cur->pid = st->pid;
        __builtin_memcpy(cur->comm, st->comm, 16);
        cur->cgroup_known = 0;
        __sync_fetch_and_add(&cur->refs, 1); /* no fetch: XADD, also before 5.12 */
        return;
    }
    struct owner o = {.pid = st->pid, .refs = 1, .cgroup_id = st->cgroup_id, .cgroup_known = 1};
    __builtin_memcpy(o.comm, st->comm, 16);
    if (listeners.update(&lk, &o) != 0)
        count_loss(LOSS_LISTENER_MAP_FULL);
}

/* A passive child at LISTEN->SYN_RECV is still a clone of its listener (inet_csk_clone_lock sets
 * the state before the child's own addresses), so its tuple gives the listener's key; a wildcard
 * key of the same family is the fallback. */
static __always_inline struct owner *listener_owner(__u32 netns, const struct tuple *t)
{
    struct listener_key lk = {};
    listener_key_of(&lk, netns, t);
    struct owner *o = listeners.lookup(&lk);
    if (o)
        return o;
    __builtin_memset(lk.addr, 0, 16);
    return listeners.lookup(&lk);
}

static __always_inline void forget_listener(const struct sockstate *st)
{
    struct listener_key lk = {};
    listener_key_of(&lk, st->netns, &st->t);
    struct owner *o = listeners.lookup(&lk);
    if (!o)
        return;
    /* read-then-decrement is not atomic (a fetching atomic needs 5.12): a listen() and a close()
     * of one SO_REUSEPORT group racing on two CPUs can leave the count one off */
    if (o->refs <= 1)
        listeners.delete(&lk);
    else
        __sync_fetch_and_add(&o->refs, -1);
}


/* Without state events, the transitions a socket's life needs: its start (CLOSE->SYN_SENT,
 * CLOSE->LISTEN, LISTEN->SYN_RECV), ESTABLISHED (its connect latency only: handle_established) and
 * CLOSE (the snapshot, with the final tuple; LISTEN->CLOSE forgets a listener).
 * FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING and TIME_WAIT carry nothing a lifecycle needs:
 * whether it was established and whether our FIN was queued are read at CLOSE from the state it
 * leaves (bpf/lifecycle.h snapshot_close()), and what uses the tracked tuple before CLOSE (a socket
 * error, an open report) reads the socket's own while the tracked one is not final (F_TUPLE_FINAL).
 * So five of a connection's ten transitions leave at the entry point, before its tuple is read or a
 * map touched. A socket first seen at one of them (older than the agent) is picked up at its CLOSE. */
static __always_inline int transition_matters(int newstate)
{
#ifdef ENABLE_STATE
    return 1;
#else
    return newstate == TS_CLOSE || newstate == TS_SYN_SENT || newstate == TS_SYN_RECV ||
           newstate == TS_LISTEN || newstate == TS_ESTABLISHED;
#endif
}

/* A socket's life starts at CLOSE->SYN_SENT (connect), CLOSE->LISTEN (listen) or LISTEN->SYN_RECV (a
 * passive child: always a new struct sock, from inet_csk_clone_lock). */
static __always_inline int life_starts(int oldstate, int newstate)
{
    return (oldstate == TS_CLOSE && (newstate == TS_SYN_SENT || newstate == TS_LISTEN)) ||
           (oldstate == TS_LISTEN && newstate == TS_SYN_RECV);
}

/* Finish what an entry at this socket's address says: the last life of the same socket (connect()
 * again after a failed one), or a dead socket whose tcp_destroy_sock was never seen, at an address
 * the allocator reused (a tracepoint program is skipped when it fires on a CPU where another tracing
 * program is running: kernel/trace/bpf_trace.c trace_call_bpf(), bpf_prog_active). Keeping the old
 * entry would hand the new socket the old role, owner, cgroup, flags and retransmit count. */
static __always_inline void finish_stale(void *ctx, __u64 key)
{
    struct sockstate *old = sockets.lookup(&key);
    if (!old)
        return;
    flush_first_state(ctx, key, old);
    emit_lifecycle(ctx, key, old);
    sockets.delete(&key);
}

/* A fresh entry's identity. Attribution: CLOSE->SYN_SENT (connect) and CLOSE->LISTEN (listen) run in
 * the owner's process context, so pid/comm are taken there. A passive child's first change is
 * LISTEN->SYN_RECV (inet_csk_clone_lock, softirq): it takes its owner, and its cgroup, from the
 * listener map. The cgroup is always the socket's, never the current task's. */
static __always_inline void fill_new(struct sockstate *fresh, const void *sk, int oldstate, int newstate,
                                     const struct tuple *t, __u64 now)
{
    fresh->first_ts = now;
    fresh->state_ts = now;
    fresh->netns = sock_netns(sk);
    fresh->t = *t;
    int cgroup_known = 0;
    if (oldstate == TS_LISTEN && newstate == TS_SYN_RECV) {
        fresh->role = ROLE_PASSIVE;
        struct owner *o = listener_owner(fresh->netns, t);
        if (o) {
            fresh->pid = o->pid;
            __builtin_memcpy(fresh->comm, o->comm, 16);
            if (o->cgroup_known) {
                fresh->cgroup_id = o->cgroup_id;
                cgroup_known = 1;
            }
        }
    } else if (oldstate == TS_CLOSE && (newstate == TS_SYN_SENT || newstate == TS_LISTEN)) {
        if (newstate == TS_SYN_SENT)
            fresh->role = ROLE_ACTIVE;
        set_owner_current(fresh);
    }
    if (!cgroup_known)
        fresh->cgroup_id = cgroup_id_of(sock_cgroup(sk));
}

/* The start of a socket's life: one insert on the common path (an entry left at the address is
 * found by the insert failing, not by a lookup first). */
static __always_inline int start_life(void *ctx, const void *sk, __u64 key, int oldstate, int newstate,
                                      const struct tuple *t)
{
    if (!sock_passes(sk, 1, t->sport, t->dport)) {
        finish_stale(ctx, key);
        return 0;
    }
    __u64 now = bpf_ktime_get_ns();
    struct sockstate fresh = {};
    fill_new(&fresh, sk, oldstate, newstate, t, now);
    if (newstate == TS_LISTEN)
        remember_listener(&fresh);
#ifdef ENABLE_STATE
    if (fresh.role != ROLE_UNKNOWN) /* CLOSE->SYN_SENT or LISTEN->SYN_RECV: held for its tuple */
        fresh.flags |= F_FIRST_PENDING;
#endif
    int err = sockets.insert(&key, &fresh);
    if (err == -T_EEXIST) {
        finish_stale(ctx, key);
        err = sockets.insert(&key, &fresh);
    }
    if (err != 0) {
        count_loss(LOSS_SOCKET_MAP_FULL); /* counted once per socket, at its start */
#ifdef ENABLE_STATE
        emit_state(ctx, key, &fresh, oldstate, newstate, now, 0);
#endif
        return 0;
    }
#ifdef ENABLE_STATE
    if (fresh.role == ROLE_UNKNOWN) /* CLOSE->LISTEN: reported now (the others wait for their tuple) */
        emit_state(ctx, key, &fresh, oldstate, newstate, now, 0);
#endif
    return 0;
}

/* The first state change seen of a socket older than the agent (mid-life): a fresh entry without a
 * role, to which the caller applies this transition. NULL when filtered out or the map is full. */
static __always_inline struct sockstate *track_old(void *ctx, const void *sk, __u64 key, int oldstate,
                                                   int newstate, const struct tuple *t)
{
    if (!sock_passes(sk, 1, t->sport, t->dport))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    struct sockstate fresh = {};
    fill_new(&fresh, sk, oldstate, newstate, t, now);
    first_seen_mid_life(sk, &fresh);
    if (sockets.insert(&key, &fresh) != 0) {
        /* not counted: a socket is counted once, at its start (connect, accept, listen, start_life);
         * a later change of an untracked socket tries again, and would count it again */
#ifdef ENABLE_STATE
        emit_state(ctx, key, &fresh, oldstate, newstate, now, 0);
#endif
        return 0;
    }
    return sockets.lookup(&key);
}

/* A socket's first ESTABLISHED: its connect latency, and the flag. */
static __always_inline void mark_established(const void *sk, struct sockstate *st, int oldstate, __u64 now)
{
    if (st->flags & F_ESTABLISHED)
        return;
    st->connect_ns = connect_latency(sk, st, oldstate, now);
    st->flags |= F_ESTABLISHED;
}

#ifndef ENABLE_STATE
/* ESTABLISHED without state events: the connect latency and the flag, and nothing else. Not the
 * tuple: the record's is not read and the tracked one is left as the start had it (CLOSE copies
 * the final one; before that, a socket error and the open pass read the socket's own while it is
 * not F_TUPLE_FINAL). Returns 0 for a socket not tracked yet: the caller takes the full path
 * (track_old). The entry point skips reading the record's tuple for it: two probe reads and a
 * 40-byte copy on both sockets of every connection. */
static __always_inline int handle_established(const void *sk, int oldstate)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sockets.lookup(&key);
    if (!st)
        return 0;
    mark_established(sk, st, oldstate, bpf_ktime_get_ns());
    return 1;
}
#endif

/* One state change of a TCP socket. Map operations on the common path: an insert at a life's start,
 * a lookup at each later transition that matters (ESTABLISHED, in handle_established, and CLOSE,
 * without state events), and the lookup and delete at destroy (bpf/lifecycle.h). */
static __always_inline int handle_set_state(void *ctx, const void *sk, int oldstate, int newstate,
                                            const struct tuple *t)
{
    __u64 key = (__u64)sk;
    if (life_starts(oldstate, newstate))
        return start_life(ctx, sk, key, oldstate, newstate, t);

    __u64 now = 0, in_old = 0;
    struct sockstate *st = sockets.lookup(&key);
    if (!st) {
        st = track_old(ctx, sk, key, oldstate, newstate, t);
        if (!st)
            return 0;
        now = st->first_ts;
    } else {
#ifdef ENABLE_STATE
        now = bpf_ktime_get_ns();
        in_old = now - st->state_ts;
#endif
        /* ports and addresses are completed along the way (the local port of a connect() is
         * chosen after CLOSE->SYN_SENT, a child gets its own addresses after the clone) */
        st->t = *t;
#ifdef ENABLE_STATE
        if (newstate == TS_ESTABLISHED) /* first: the held first change carries the id too */
            record_isns(sk, st);
#endif
        flush_first_state(ctx, key, st);
    }

    if (newstate == TS_ESTABLISHED)
        mark_established(sk, st, oldstate, now ? now : bpf_ktime_get_ns());
    if (newstate == TS_ESTABLISHED || newstate == TS_CLOSE)
        st->flags |= F_TUPLE_FINAL;
    if (oldstate == TS_LISTEN && newstate == TS_CLOSE)
        forget_listener(st);
    /* the snapshot reads the ISN pair too (ESTABLISHED reads it only with state events) */
    if (newstate == TS_CLOSE)
        snapshot_close(sk, st, oldstate, now ? now : bpf_ktime_get_ns());
#ifdef ENABLE_STATE
    st->state_ts = now;
    emit_state(ctx, key, st, oldstate, newstate, now, in_old);
#endif
#ifndef HAS_TP_TCP_DESTROY_SOCK
    if (newstate == TS_CLOSE) {
        emit_lifecycle(ctx, key, st);
        sockets.delete(&key);
    }
#endif
    return 0;
}

#endif

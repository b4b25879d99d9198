/* sock:inet_sock_set_state: state changes, socket tracking and attribution. */
#ifndef TCPSCOPE_STATE_H
#define TCPSCOPE_STATE_H

#include "events.h"
#include "tcp_defs.h"
#include "sockstate.h"
#include "maps.h"
#include "kread.h"
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

/* listen() runs in the owner's process context: remember the owner for passive children. */
static __always_inline void remember_listener(const struct sockstate *st)
{
    struct listener_key lk = {};
    listener_key_of(&lk, st->netns, &st->t);
    struct owner *cur = listeners.lookup(&lk);
    if (cur) { /* another listener of an SO_REUSEPORT group: the newest owner speaks for it */
        cur->pid = st->pid;
        __builtin_memcpy(cur->comm, st->comm, 16);
        __sync_fetch_and_add(&cur->refs, 1); /* no fetch: XADD, also before 5.12 */
        return;
    }
    struct owner o = {.pid = st->pid, .refs = 1};
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


/* One state change of a TCP socket.
 * Attribution: CLOSE->SYN_SENT (connect) and CLOSE->LISTEN (listen) run in the owner's process
 * context, so pid/comm are taken there. A passive child's first change is LISTEN->SYN_RECV
 * (inet_csk_clone_lock, softirq): it takes its owner from the listener map. The cgroup is always
 * read from the socket (children inherit the listener's sk_cgrp_data). */
static __always_inline int handle_set_state(void *ctx, const void *sk, int oldstate, int newstate,
                                            const struct tuple *t)
{
    __u64 key = (__u64)sk;
    __u64 now = bpf_ktime_get_ns();
    __u64 in_old = 0;
    struct sockstate *st = sockets.lookup(&key);

    /* A socket's life starts at CLOSE->SYN_SENT (connect), CLOSE->LISTEN (listen) or
     * LISTEN->SYN_RECV (a passive child: always a new struct sock, from inet_csk_clone_lock). An
     * entry already there is either the same socket starting over (connect() again after a failed
     * one) or a dead socket whose tcp_destroy_sock was never seen, at an address the allocator
     * reused: a tracepoint program is skipped when it fires on a CPU where another tracing program
     * is running (kernel/trace/bpf_trace.c trace_call_bpf(), bpf_prog_active). Finish the last life
     * and start from a fresh entry either way: keeping the old one would hand the new socket the
     * old role, owner, cgroup, flags and retransmit count. */
    if (st && ((oldstate == TS_CLOSE && (newstate == TS_SYN_SENT || newstate == TS_LISTEN)) ||
               (oldstate == TS_LISTEN && newstate == TS_SYN_RECV))) {
        flush_first_state(ctx, key, st);
        emit_lifecycle(ctx, key, st);
        sockets.delete(&key);
        st = 0;
    }

    if (!st) {
        if (!sock_passes(sk, 1, t->sport, t->dport))
            return 0;
        struct sockstate fresh = {};
        fresh.first_ts = now;
        fresh.state_ts = now;
        fresh.cgroup_id = cgroup_id_of(sock_cgroup(sk));
        fresh.netns = sock_netns(sk);
        fresh.t = *t;
        if (oldstate == TS_CLOSE && newstate == TS_SYN_SENT) {
            fresh.role = ROLE_ACTIVE;
            set_owner_current(&fresh);
        } else if (oldstate == TS_CLOSE && newstate == TS_LISTEN) {
            set_owner_current(&fresh);
        } else if (oldstate == TS_LISTEN && newstate == TS_SYN_RECV) {
            fresh.role = ROLE_PASSIVE;
            struct owner *o = listener_owner(fresh.netns, t);
            if (o) {
                fresh.pid = o->pid;
                __builtin_memcpy(fresh.comm, o->comm, 16);
            }
        }
        if (newstate == TS_LISTEN)
            remember_listener(&fresh);
        if (sockets.insert(&key, &fresh) != 0) {
            /* counted once per socket, at its start (connect, accept, listen): a later change of an
             * untracked socket tries again, and would count it again */
            if (fresh.role != ROLE_UNKNOWN || newstate == TS_LISTEN)
                count_loss(LOSS_SOCKET_MAP_FULL);
#ifdef ENABLE_STATE
            emit_state(ctx, key, &fresh, oldstate, newstate, now, 0);
#endif
            return 0;
        }
        st = sockets.lookup(&key);
        if (!st)
            return 0;
        if (fresh.role != ROLE_UNKNOWN) { /* CLOSE->SYN_SENT or LISTEN->SYN_RECV: held for its tuple */
            st->flags |= F_FIRST_PENDING;
            return 0;
        }
    } else {
        in_old = now - st->state_ts;
        /* ports and addresses are completed along the way (the local port of a connect() is
         * chosen after CLOSE->SYN_SENT) */
        st->t = *t;
        if (newstate == TS_ESTABLISHED) /* first: the held first change carries the id too */
            record_isns(sk, st);
        flush_first_state(ctx, key, st);
        if (newstate == TS_LISTEN)
            remember_listener(st);
    }

    if (newstate == TS_ESTABLISHED)
        st->flags |= F_ESTABLISHED;
    if (newstate == TS_FIN_WAIT1 || newstate == TS_CLOSING || newstate == TS_LAST_ACK)
        st->flags |= F_FIN_QUEUED;
    if (oldstate == TS_LISTEN && newstate == TS_CLOSE)
        forget_listener(st);
    if (newstate == TS_CLOSE)
        snapshot_close(sk, st, oldstate, now);
    st->state_ts = now;
#ifdef ENABLE_STATE
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

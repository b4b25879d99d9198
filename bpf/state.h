/* sock:inet_sock_set_state: state changes, socket tracking and attribution. */
#ifndef TCPSCOPE_STATE_H
#define TCPSCOPE_STATE_H

static __always_inline void set_owner_current(struct sockstate *st)
{
    st->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&st->comm, sizeof(st->comm));
}

/* listen() runs in the owner's process context: remember the owner for passive children. */
static __always_inline void remember_listener(const struct sockstate *st)
{
    struct listener_key lk = {.netns = st->netns, .port = st->t.sport};
    struct owner o = {.pid = st->pid};
    __builtin_memcpy(o.comm, st->comm, 16);
    if (listeners.update(&lk, &o) != 0)
        count_loss(LOSS_LISTENER_MAP_FULL);
}

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
            struct listener_key lk = {.netns = fresh.netns, .port = t->sport};
            struct owner *o = listeners.lookup(&lk);
            if (o) {
                fresh.pid = o->pid;
                __builtin_memcpy(fresh.comm, o->comm, 16);
            }
        }
        if (newstate == TS_LISTEN)
            remember_listener(&fresh);
        if (sockets.insert(&key, &fresh) != 0) {
            count_loss(LOSS_SOCKET_MAP_FULL);
#ifdef ENABLE_STATE
            emit_state(ctx, key, &fresh, oldstate, newstate, now, 0);
#endif
            return 0;
        }
        st = sockets.lookup(&key);
        if (!st)
            return 0;
    } else {
        in_old = now - st->state_ts;
        if (oldstate == TS_CLOSE && (newstate == TS_SYN_SENT || newstate == TS_LISTEN)) {
            /* the same socket reused (connect again after a failure): finish the last life */
            emit_lifecycle(ctx, key, st);
            st->first_ts = now;
            st->flags = 0;
            st->err_report = 0;
            st->sk_err = 0;
            st->rst_reason = 0;
            st->retransmits = 0;
            st->role = newstate == TS_SYN_SENT ? ROLE_ACTIVE : ROLE_UNKNOWN;
            set_owner_current(st);
            in_old = 0;
        }
        /* ports and addresses are completed along the way (the local port of a connect() is
         * chosen after CLOSE->SYN_SENT) */
        st->t = *t;
        if (newstate == TS_LISTEN)
            remember_listener(st);
    }

    if (newstate == TS_ESTABLISHED)
        st->flags |= F_ESTABLISHED;
    if (newstate == TS_FIN_WAIT1 || newstate == TS_CLOSING || newstate == TS_LAST_ACK)
        st->flags |= F_FIN_QUEUED;
    if (oldstate == TS_LISTEN && newstate == TS_CLOSE) {
        struct listener_key lk = {.netns = st->netns, .port = st->t.sport};
        listeners.delete(&lk);
    }
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

/* Building events: the socket id, the identity and tuple every event carries, and begin_event()
 * for the events that are not lifecycles. */
#ifndef TCPSCOPE_EMIT_H
#define TCPSCOPE_EMIT_H

#include "events.h"
#include "sockstate.h"
#include "maps.h"
#include "kread.h"
#include "filters.h"

static __always_inline void event_tuple(struct tcpscope_event *ev, const struct tuple *t)
{
    __builtin_memcpy(ev->saddr, t->saddr, 16);
    __builtin_memcpy(ev->daddr, t->daddr, 16);
    ev->sport = t->sport;
    ev->dport = t->dport;
    ev->family = t->family;
}

/* The socket id: a keyed bijection of the sock pointer (splitmix64's finalizer between the per-load
 * key and a second key derived from it). Ids stay unique while sockets live, but neither kernel
 * addresses nor their differences (which a plain XOR would keep) can be read from the ids in Kafka. */
static __always_inline __u64 socket_id_of(__u64 key)
{
    __u64 x = key ^ SOCKET_KEY;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x ^ (SOCKET_KEY * 0x9e3779b97f4a7c15ULL);
}

static __always_inline void event_identity(struct tcpscope_event *ev, __u64 key, const struct sockstate *st)
{
    ev->socket_id = socket_id_of(key);
    ev->cgroup_id = st->cgroup_id;
    ev->netns = st->netns;
    ev->pid = st->pid;
    ev->role = st->role;
    ev->isn_client = st->isn_client;
    ev->isn_server = st->isn_server;
    __builtin_memcpy(ev->comm, st->comm, 16);
}

/* Start a non-lifecycle event about sk (may be NULL), whose socket map entry the caller looked up
 * (st, NULL when not tracked): identity from the entry when tracked, else read from the socket (pid
 * unknown) if it passes the filters. The tuple is the record's own (t), or the tracked one when t is
 * NULL. Returns NULL when filtered out. */
static __always_inline struct tcpscope_event *
begin_event_of(__u8 kind, const void *sk, const struct sockstate *st, int full, const struct tuple *t)
{
    __u64 key = (__u64)sk;
    if (!st) {
        if (!t || !sock_passes(sk, full, t->sport, t->dport))
            return 0;
    }
    struct tcpscope_event *ev = scratch_event();
    if (!ev)
        return 0;
    ev->kind = kind;
    ev->ts_ns = bpf_ktime_get_ns();
    if (st) {
        event_identity(ev, key, st);
        event_tuple(ev, t ? t : &st->t);
    } else {
        ev->socket_id = sk ? socket_id_of(key) : 0;
        if (sk) {
            ev->netns = sock_netns(sk);
            if (full)
                ev->cgroup_id = cgroup_id_of(sock_cgroup(sk));
        }
        event_tuple(ev, t);
    }
    return ev;
}

/* begin_event_of() for a caller that has not looked the socket up. */
static __always_inline struct tcpscope_event *begin_event(__u8 kind, const void *sk, int full,
                                                          const struct tuple *t)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sk ? sockets.lookup(&key) : 0;
    return begin_event_of(kind, sk, st, full, t);
}

#endif

/* Connections open before the agent started ("seeding"). The per-socket map is keyed by the struct
 * sock pointer, which /proc does not show. User space reads each network namespace's connections
 * from /proc/<pid>/net/tcp{,6} and, in that namespace, runs this classifier program with
 * BPF_PROG_TEST_RUN (it is never attached to a device) once per connection: bpf_sk_lookup_tcp()
 * turns the tuple into the socket, held by a reference while the entry is made.
 *
 * A seeded socket counts from the moment it was found: its rep_* start at its counters then, so
 * interim reports and its lifecycle say only what happened after (O_SEEDED, OPEN_SEEDED). What an
 * earlier agent reported before it stopped is never counted again; what happened between that
 * agent's last report and this moment is the unobserved window the next agent reports. Its role
 * comes from the listeners (user space: local port listening => PASSIVE), its owner from
 * /proc/<pid>/fd; its connect latency is unknown, its retransmits count from then. With the role
 * known, its initial sequence numbers (bpf/connid.h) are, so it has its connection_id. */
#ifndef TCPSCOPE_SEED_H
#define TCPSCOPE_SEED_H

#include "events.h"
#include "sockstate.h"
#include "tcp_defs.h"
#include "maps.h"
#include "kread.h"
#include "filters.h"
#include "counters.h"
#include "connid.h"

#ifdef OPEN_SEED
/* seed_req[0]: the connection to find, written by user space before each run */
BPF_ARRAY(seed_req, struct seed_req, 1);

static __always_inline int connection_state(int state)
{
    return state == TS_ESTABLISHED || state == TS_FIN_WAIT1 || state == TS_FIN_WAIT2 ||
           state == TS_CLOSE_WAIT || state == TS_LAST_ACK || state == TS_CLOSING;
}

static __always_inline int seed_socket(__u64 key, const struct seed_req *r)
{
    if (sockets.lookup(&key))
        return SEED_KNOWN;
    const void *sk = (const void *)key;
    int state = (int)(read_u32((const char *)sk + OFF_SKC_STATE) & 0xff);
    if (!connection_state(state))
        return SEED_STATE;
    if (!sock_passes(sk, 1, r->lport, r->rport))
        return SEED_FILTERED;
    __u64 now = bpf_ktime_get_ns();
    struct sockstate fresh = {};
    fresh.first_ts = now;
    fresh.state_ts = now;
    fresh.cgroup_id = cgroup_id_of(sock_cgroup(sk));
    fresh.netns = sock_netns(sk);
    __builtin_memcpy(fresh.t.saddr, r->laddr, 16);
    __builtin_memcpy(fresh.t.daddr, r->raddr, 16);
    fresh.t.sport = r->lport;
    fresh.t.dport = r->rport;
    fresh.t.family = r->family;
    fresh.role = r->role;
    fresh.pid = r->pid;
    __builtin_memcpy(fresh.comm, r->comm, 16);
    fresh.flags = F_ESTABLISHED;
    if (state == TS_FIN_WAIT1 || state == TS_FIN_WAIT2 || state == TS_CLOSING || state == TS_LAST_ACK)
        fresh.flags |= F_FIN_QUEUED;
    fresh.oflags = O_SEEDED;
    fresh.connect_taken = 1; /* unknown: nothing to report */
    record_isns(sk, &fresh); /* constant after the handshake (bpf/connid.h): known with the role */
    interim_bytes(sk, &fresh, &fresh.rep_tx, &fresh.rep_rx);
    if (sockets.insert(&key, &fresh) != 0) {
        if (sockets.lookup(&key))
            return SEED_KNOWN;
        count_loss(LOSS_SOCKET_MAP_FULL);
        return SEED_FULL;
    }
    /* Closed meanwhile? The CLOSE and destroy tracepoints may have run before the entry existed: it
     * would never be removed. If CLOSE saw the entry (F_CLOSED), its destroy will come. */
    state = (int)(read_u32((const char *)sk + OFF_SKC_STATE) & 0xff);
    if (!connection_state(state)) {
        struct sockstate *st = sockets.lookup(&key);
        if (st && !(st->flags & F_CLOSED))
            sockets.delete(&key);
        return SEED_STATE;
    }
    return SEED_ADDED;
}

/* The lookup tuple is the one of a packet arriving at the socket: from the remote end to us. */
static __always_inline int handle_seed(struct __sk_buff *skb)
{
    int zero = 0;
    struct seed_req *r = seed_req.lookup(&zero);
    if (!r)
        return SEED_NOT_FOUND;
    struct bpf_sock_tuple tup = {};
    __u32 size = sizeof(tup.ipv4);
    if (r->v4_lookup) {
        int at = r->family == T_AF_INET6 ? 12 : 0; /* v4-mapped: the IPv4 address is the last 4 bytes */
        __builtin_memcpy(&tup.ipv4.saddr, r->raddr + at, 4);
        __builtin_memcpy(&tup.ipv4.daddr, r->laddr + at, 4);
        tup.ipv4.sport = __builtin_bswap16(r->rport);
        tup.ipv4.dport = __builtin_bswap16(r->lport);
    } else {
        __builtin_memcpy(tup.ipv6.saddr, r->raddr, 16);
        __builtin_memcpy(tup.ipv6.daddr, r->laddr, 16);
        tup.ipv6.sport = __builtin_bswap16(r->rport);
        tup.ipv6.dport = __builtin_bswap16(r->lport);
        size = sizeof(tup.ipv6);
    }
    struct bpf_sock *sk = bpf_sk_lookup_tcp(skb, &tup, size, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return SEED_NOT_FOUND;
    /* the verifier allows no arithmetic on a socket reference: its value, copied, is the map key */
    __u64 key = 0;
    bpf_probe_read_kernel(&key, sizeof(key), &sk);
    int res = seed_socket(key, r);
    bpf_sk_release(sk);
    return res;
}
#endif /* OPEN_SEED */

#endif

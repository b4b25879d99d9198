/* Maps, kernel-struct readers and the filters shared by every handler.
 *
 * Nothing here uses a kernel struct layout from header files: every offset below (OFF_*) is a -D
 * constant computed at start-up from the running kernel's BTF (agent/kernel/probe.py), and every
 * tracepoint record is a struct generated from its tracefs format file. Only the 6.1 headers of
 * Debian may be installed while another kernel runs, so a layout from headers would be wrong. */
#ifndef TCPSCOPE_COMMON_H
#define TCPSCOPE_COMMON_H

#define T_AF_INET 2
#define T_AF_INET6 10
#define T_IPPROTO_TCP 6

/* include/net/tcp_states.h: stable since 2.6 */
#define TS_ESTABLISHED 1
#define TS_SYN_SENT 2
#define TS_SYN_RECV 3
#define TS_FIN_WAIT1 4
#define TS_FIN_WAIT2 5
#define TS_TIME_WAIT 6
#define TS_CLOSE 7
#define TS_CLOSE_WAIT 8
#define TS_LAST_ACK 9
#define TS_LISTEN 10
#define TS_CLOSING 11
#define TS_NEW_SYN_RECV 12

/* sockstate.flags */
#define F_ESTABLISHED 1 /* reached ESTABLISHED */
#define F_FIN_QUEUED 2  /* went through FIN_WAIT1, CLOSING or LAST_ACK: our FIN was queued */
#define F_RST_SENT 4
#define F_RST_RECEIVED 8
#define F_CLOSED 16        /* CLOSE seen: the lifecycle fields below are a snapshot */
#define F_FIRST_PENDING 32 /* the first state change waits for the tuple (bpf/state_event.h) */

struct tuple {
    __u8 saddr[16];
    __u8 daddr[16];
    __u16 sport;
    __u16 dport;
    __u16 family;
    __u16 pad;
};

struct sockstate {
    __u64 first_ts;  /* first state change seen */
    __u64 state_ts;  /* last state change */
    __u64 close_ts;  /* CLOSE (when F_CLOSED) */
    __u64 cgroup_id; /* from the socket, never from the current task */
    __u64 tx_bytes;  /* application bytes, computed at CLOSE */
    __u64 rx_bytes;
    struct tuple t;
    __u32 netns;
    __u32 pid;
    __s32 err_report; /* last sock:inet_sk_error_report errno */
    __s32 sk_err;     /* sk->sk_err at CLOSE */
    __u32 rst_reason;
    __u32 retransmits;
    __u8 role;
    __u8 last_state; /* the state it left for CLOSE */
    __u8 flags;
    __u8 pad[5];
    char comm[16];
};

/* A listening socket's address: {netns, family, bound address, port}. The address is as in struct
 * tuple (IPv4 in the first 4 bytes), all zero for a wildcard bind. IPv4 and IPv6 listeners on one
 * port, or listeners on different addresses, are different keys; SO_REUSEPORT listeners share one. */
struct listener_key {
    __u8 addr[16];
    __u32 netns;
    __u16 port;
    __u16 family;
};

struct owner {
    __u32 pid;
    __u32 refs; /* listening sockets with this key (SO_REUSEPORT groups have several) */
    char comm[16];
};

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

/* ---- kernel struct fields, offsets from BTF ------------------------------------------------ */

static __always_inline __u64 read_u64(const void *p)
{
    __u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p);
    return v;
}

static __always_inline __u32 read_u32(const void *p)
{
    __u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p);
    return v;
}

/* sk->sk_cgrp_data.cgroup: the socket's cgroup v2 (set at socket creation, inherited by children).
 * 4.5-5.14 keep it in `u64 val`, a union with the cgroup v1 net_prio/net_cls data: bit 0 (is_data)
 * set means a v1 setting overwrote the pointer, bit 1 (no_refcnt, 5.7+) that cgroup accounting of
 * sockets was disabled when the socket was made; the kernel's sock_cgroup_ptr() then answers the
 * root cgroup. The socket's own cgroup is unknown then, and 0 (no cgroup) says so rather than
 * claiming the root. Pointers are 8-byte aligned, so a pointer never has those bits. */
static __always_inline const void *sock_cgroup(const void *sk)
{
    __u64 v = read_u64((const char *)sk + OFF_SK_CGROUP);
#ifdef SOCK_CGROUP_UNION
    if (v & 3)
        return 0;
#endif
    return (const void *)v;
}

/* cgrp->kn->id: the cgroup v2 id, equal to the inode of its cgroupfs directory. Since 5.5 a u64;
 * before, a union whose first u32 (ino) is the inode number and the second a generation
 * (KN_ID_SIZE 4 reads the ino alone). */
static __always_inline __u64 cgroup_id_of(const void *cgrp)
{
    if (!cgrp)
        return 0;
    const void *kn = (const void *)read_u64((const char *)cgrp + OFF_CGROUP_KN);
    if (!kn)
        return 0;
#if KN_ID_SIZE == 8
    return read_u64((const char *)kn + OFF_KN_ID);
#else
    return read_u32((const char *)kn + OFF_KN_ID);
#endif
}

/* sk->__sk_common.skc_net.net->ns.inum (valid for full, request and timewait socks alike) */
static __always_inline __u32 sock_netns(const void *sk)
{
    const void *net = (const void *)read_u64((const char *)sk + OFF_SKC_NET);
    if (!net)
        return 0;
    return read_u32((const char *)net + OFF_NET_INUM);
}

#ifdef FILTER_CGROUP_ID
/* Is the socket's cgroup FILTER_CGROUP_ID or below it? The ancestor at the root's level must be
 * the root. cgroup.ancestors[] (pointers) since 6.1 (commit 7f203bc89eb6), ancestor_ids[] (ids)
 * before. */
static __always_inline int cgroup_in_subtree(const void *cgrp)
{
    if (!cgrp)
        return 0;
    int level = (int)read_u32((const char *)cgrp + OFF_CGROUP_LEVEL);
    if (level < FILTER_CGROUP_LEVEL)
        return 0;
#ifdef CGROUP_ANCESTOR_IDS
    return read_u64((const char *)cgrp + OFF_CGROUP_ANCESTORS + 8 * FILTER_CGROUP_LEVEL) == FILTER_CGROUP_ID;
#else
    const void *anc =
        (const void *)read_u64((const char *)cgrp + OFF_CGROUP_ANCESTORS + 8 * FILTER_CGROUP_LEVEL);
    return cgroup_id_of(anc) == FILTER_CGROUP_ID;
#endif
}
#endif

/* The in-kernel filters. `full` says sk is a full socket (not a request or timewait sock), whose
 * cgroup can be read; a NULL sk (e.g. a RST for a closed port) passes only the port filter. */
static __always_inline int sock_passes(const void *sk, int full, __u16 sport, __u16 dport)
{
#ifdef PORT_MATCH
    if (!(PORT_MATCH(sport) || PORT_MATCH(dport)))
        return 0;
#endif
#ifdef FILTER_NETNS
    if (!sk || sock_netns(sk) != FILTER_NETNS)
        return 0;
#endif
#ifdef FILTER_CGROUP_ID
    if (!sk || !full || !cgroup_in_subtree(sock_cgroup(sk)))
        return 0;
#endif
    return 1;
}

/* ---- tuples from tracepoint records --------------------------------------------------------- */

static __always_inline int is_v4_mapped(const __u8 *a)
{
    __u32 w[3] = {};
    __builtin_memcpy(w, a, 12);
    return w[0] == 0 && w[1] == 0 && w[2] == 0xffff0000; /* ::ffff:0:0/96 read little-endian */
}

/* Addresses are copied out of the record with bpf_probe_read_kernel rather than memcpy: with
 * some layouts (4.16's packed inet_sock_set_state) clang computes a pointer into the context and
 * dereferences it, which the verifier rejects ("dereference of modified ctx ptr"). */

/* The TCP_EVENT layout shared by most tcp/sock tracepoints: host-order ports, saddr[4]/daddr[4]
 * and v4-mapped or native saddr_v6/daddr_v6. */
static __always_inline void tuple_classic(struct tuple *t, __u16 family, __u16 sport, __u16 dport,
                                          const __u8 *s4, const __u8 *d4, const __u8 *s6, const __u8 *d6)
{
    t->sport = sport;
    t->dport = dport;
    t->family = family;
    if (family == T_AF_INET) {
        bpf_probe_read_kernel(t->saddr, 4, s4);
        bpf_probe_read_kernel(t->daddr, 4, d4);
    } else {
        bpf_probe_read_kernel(t->saddr, 16, s6);
        bpf_probe_read_kernel(t->daddr, 16, d6);
    }
}

/* Records without a family field (before 5.12's "exposing sk_family in all tcp:tracepoints"):
 * a v4-mapped v6 address means AF_INET (the kernel fills saddr_v6 that way for v4 sockets). */
static __always_inline __u16 guess_family(const __u8 *s6)
{
    __u8 a[16] = {};
    bpf_probe_read_kernel(a, 16, s6);
    return is_v4_mapped(a) ? T_AF_INET : T_AF_INET6;
}

/* struct sockaddr_in / sockaddr_in6 copies (tcp_send_reset 6.10+, tcp_probe): network-order port. */
static __always_inline void addr_from_sockaddr(const __u8 *record_sa, __u8 *addr, __u16 *port, __u16 *family)
{
    __u8 sa[28] = {};
    bpf_probe_read_kernel(sa, sizeof(sa), record_sa);
    __u16 fam = sa[0] | ((__u16)sa[1] << 8);
    *port = ((__u16)sa[2] << 8) | sa[3];
    if (fam == T_AF_INET) {
        __builtin_memcpy(addr, sa + 4, 4);
        *family = fam;
    } else if (fam == T_AF_INET6) {
        __builtin_memcpy(addr, sa + 8, 16);
        *family = fam;
    }
}

static __always_inline void tuple_sockaddr(struct tuple *t, const __u8 *sa, const __u8 *da)
{
    __u16 fam = 0;
    addr_from_sockaddr(sa, t->saddr, &t->sport, &fam);
    addr_from_sockaddr(da, t->daddr, &t->dport, &t->family);
    if (fam)
        t->family = fam;
}

/* ---- events ------------------------------------------------------------------------------- */

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
    __builtin_memcpy(ev->comm, st->comm, 16);
}

/* Start a non-lifecycle event about sk (may be NULL): identity from the socket map when the socket
 * is tracked, else read from the socket (pid unknown) if it passes the filters. The tuple is the
 * record's own (t), or the tracked one when t is NULL. Returns NULL when filtered out. */
static __always_inline struct tcpscope_event *begin_event(__u8 kind, const void *sk, int full,
                                                          const struct tuple *t)
{
    __u64 key = (__u64)sk;
    struct sockstate *st = sk ? sockets.lookup(&key) : 0;
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

#endif

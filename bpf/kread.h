/* Reading kernel structs. Nothing here uses a struct layout from header files: every offset (OFF_*)
 * is a -D constant computed at start-up from the running kernel's BTF (agent/kernel/probe.py). Only
 * the 6.1 headers of Debian may be installed while another kernel runs, so a layout from headers
 * would be wrong. */
#ifndef TCPSCOPE_KREAD_H
#define TCPSCOPE_KREAD_H

#include "tcp_defs.h"
#include "sockstate.h"

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

static __always_inline __u8 read_u8(const void *p)
{
    __u8 v = 0;
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

/* The socket's own tuple, from struct sock_common (the sockets whose tracked tuple is not final yet,
 * bpf/state.h F_TUPLE_FINAL, and events whose record has none). Ports: skc_num is host order,
 * skc_dport network order. */
static __always_inline void tuple_of_sock(struct tuple *t, const void *sk)
{
    __u16 family = 0, num = 0, dport = 0;
    bpf_probe_read_kernel(&family, 2, (const char *)sk + OFF_SKC_FAMILY);
    bpf_probe_read_kernel(&num, 2, (const char *)sk + OFF_SKC_NUM);
    bpf_probe_read_kernel(&dport, 2, (const char *)sk + OFF_SKC_DPORT);
    t->family = family;
    t->sport = num;
    t->dport = (__u16)((dport >> 8) | (dport << 8));
    if (family == T_AF_INET) {
        bpf_probe_read_kernel(t->saddr, 4, (const char *)sk + OFF_SKC_RCV_SADDR);
        bpf_probe_read_kernel(t->daddr, 4, (const char *)sk + OFF_SKC_DADDR);
    } else {
        bpf_probe_read_kernel(t->saddr, 16, (const char *)sk + OFF_SKC_V6_RCV_SADDR);
        bpf_probe_read_kernel(t->daddr, 16, (const char *)sk + OFF_SKC_V6_DADDR);
    }
}

#endif

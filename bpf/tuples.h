/* Connection tuples from tracepoint records: the classic TCP_EVENT layout (host-order ports,
 * IPv4 and IPv6 address fields) and the sockaddr copies of newer records. */
#ifndef TCPSCOPE_TUPLES_H
#define TCPSCOPE_TUPLES_H

#include "tcp_defs.h"
#include "sockstate.h"

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

#endif

/* The kernel's own numbers that tcpscope compares against: address families, the TCP protocol
 * number and the TCP states. Stable kernel ABI, so plain constants (tests/test_consistency.py checks
 * them against Python's socket module and tcpscope.v1.TcpState). */
#ifndef TCPSCOPE_TCP_DEFS_H
#define TCPSCOPE_TCP_DEFS_H

#define T_AF_INET 2
#define T_AF_INET6 10
#define T_IPPROTO_TCP 6
#define T_EEXIST 17 /* errno: bpf_map_update_elem(BPF_NOEXIST) on a key that is there */

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

/* include/uapi/linux/errqueue.h: struct sock_extended_err.ee_origin of an ICMP error (stable uapi) */
#define EE_ORIGIN_ICMP 2
#define EE_ORIGIN_ICMP6 3

#endif

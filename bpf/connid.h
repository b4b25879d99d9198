/* The raw material of TcpEvent.connection_id: the connection's two initial sequence numbers (ISNs),
 * the client's and the server's, recorded once per socket, at its SYN_SENT->ESTABLISHED (client) or
 * SYN_RECV->ESTABLISHED (server) transition. NAT (kube-proxy's DNAT to a backend, SNAT, masquerade)
 * rewrites addresses and ports, never sequence numbers, so both sockets of one connection record the
 * same pair. The kernel hands the pair to user space in the record; the agent publishes only a keyed
 * hash of it (agent/kernel/connid.py), never the numbers, which are what a RST injection needs.
 *
 * No kprobe and no new field: tcp_sock keeps no ISN, but two pairs it does keep move together.
 *   tcp_snd_una_update(): bytes_acked += ack - snd_una; snd_una = ack
 *   tcp_rcv_nxt_update(): bytes_received += seq - rcv_nxt; rcv_nxt = seq
 * (net/ipv4/tcp_input.c, since 4.1: commits 0df48c26d841 "tcp: add tcpi_bytes_acked to tcp_info"
 * and bdd1f9edacb5 "tcp: add tcpi_bytes_received to tcp_info"; unchanged in 5.10, 6.1, 6.12 and
 * 6.18, where 6.7's TCP-AO only added its sequence-number extension beside them and 6.13+ wraps the
 * stores in WRITE_ONCE). So snd_una - bytes_acked and rcv_nxt - bytes_received (mod 2^32) are
 * constant after the handshake. What the handshake sets directly, outside those two functions,
 * decides the constants by role:
 * - client (active open): tcp_connect_init() sets snd_una = ISN_c, and the SYN-ACK goes through
 *   tcp_ack(), so bytes_acked counts our SYN: snd_una - bytes_acked = ISN_c.
 *   tcp_rcv_synsent_state_process() sets rcv_nxt = ISN_s + 1 directly (bytes_received does not count
 *   the peer's SYN): rcv_nxt - bytes_received = ISN_s + 1.
 * - server (a passive child): tcp_create_openreq_child() sets snd_una = ISN_s + 1 and rcv_nxt =
 *   ISN_c + 1, and the counters start at the listener's zeros (the child is a copy of its listener,
 *   which never acks or receives). The ACK of the SYN-ACK then acks nothing new
 *   (tcp_rcv_state_process()'s direct `snd_una = ack_seq` in SYN_RECV is a no-op after tcp_ack()):
 *   snd_una - bytes_acked = ISN_s + 1 and rcv_nxt - bytes_received = ISN_c + 1.
 * - Both counters start at 0 on a fresh socket, and tcp_disconnect() zeroes them since 5.3 (commit
 *   e858faf556d4, in 4.19.61 and 5.2.4 too). Before, a socket connected, disconnected with
 *   connect(AF_UNSPEC) and then connected again, or listened on (its children copy it), kept its old
 *   counts: its ids are wrong there, and match nothing.
 * Both hold at the ESTABLISHED transition itself (the client's tcp_ack() and rcv_nxt come before
 * tcp_finish_connect(); the server's child is set up before its SYN_RECV->ESTABLISHED), and the data
 * of the third ACK, or any later segment, moves a counter and its sequence number together.
 * - TCP Fast Open: the same. A client's SYN data acked by the SYN-ACK goes through tcp_ack()
 *   (bytes_acked = 1 + its length); a server child created from a SYN with data gets rcv_nxt past
 *   the data and bytes_received = its length (tcp_fastopen_add_skb()), and snd_una = ISN_s + 1 from
 *   tcp_create_openreq_child() like any child.
 * - SYN cookies: the child is made by tcp_create_openreq_child() from the cookie's request (ISN_s is
 *   the cookie), so it is the ordinary server case.
 * - Unknown (0, 0): a socket that never reached ESTABLISHED (a refused or timed-out connect, a
 *   handshake child that lost a race), and a socket first seen mid-life (the agent started after its
 *   handshake, or TCP_REPAIR restored it): its role is unknown and the two constants differ by one
 *   between roles, so the pair cannot be told. A simultaneous open (both ends connect(), both ACTIVE)
 *   records the true ISNs, but each end puts its own first: its two sockets get different ids.
 * A real pair is (0, 0) with probability 2^-64: it then reads as unknown. */
#ifndef TCPSCOPE_CONNID_H
#define TCPSCOPE_CONNID_H

#include "events.h"
#include "sockstate.h"
#include "kread.h"
#include "tcp_defs.h"

/* The pair from the counters (also read by a CLOSE's snapshot, which passes them on). */
static __always_inline void isns_from(struct sockstate *st, __u32 snd_una, __u64 bytes_acked, __u32 rcv_nxt,
                                      __u64 bytes_received)
{
    __u32 send_base = snd_una - (__u32)bytes_acked;
    __u32 recv_base = rcv_nxt - (__u32)bytes_received;
    if (st->role == ROLE_ACTIVE) {
        st->isn_client = send_base;
        st->isn_server = recv_base - 1;
    } else if (st->role == ROLE_PASSIVE) {
        st->isn_client = recv_base - 1;
        st->isn_server = send_base - 1;
    }
}

/* Four reads, once per connection socket: at its ESTABLISHED transition when state events are on
 * (bpf/state.h reads that transition then), else at the first event that needs them (ensure_isns()).
 * The two differences hold from the handshake to CLOSE, so any moment after ESTABLISHED gives the
 * same pair. */
static __always_inline void record_isns(const void *sk, struct sockstate *st)
{
    if (st->role != ROLE_ACTIVE && st->role != ROLE_PASSIVE)
        return;
    const char *s = (const char *)sk;
    isns_from(st, read_u32(s + OFF_SND_UNA), read_u64(s + OFF_BYTES_ACKED), read_u32(s + OFF_RCV_NXT),
              read_u64(s + OFF_BYTES_RECEIVED));
}

/* A socket state past the handshake and not closed yet: its ISN pair can be read. */
static __always_inline int isns_readable(int state)
{
    return state == TS_ESTABLISHED || state == TS_FIN_WAIT1 || state == TS_FIN_WAIT2 ||
           state == TS_CLOSE_WAIT || state == TS_CLOSING || state == TS_LAST_ACK;
}

/* The ISN pair, read now if it is still unknown and the connection was established (the events of
 * an established socket carry connection_id: a reset, an error or a retransmit before CLOSE, the
 * lifecycle at CLOSE). */
static __always_inline void ensure_isns(const void *sk, struct sockstate *st, int established)
{
    if (established && st->isn_client == 0 && st->isn_server == 0)
        record_isns(sk, st);
}

#endif

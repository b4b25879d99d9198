/* What the programs remember per socket and per listener (the values of the maps in bpf/maps.h).
 * Kernel-side only: user space never reads these, it reads struct tcpscope_event (bpf/events.h). */
#ifndef TCPSCOPE_SOCKSTATE_H
#define TCPSCOPE_SOCKSTATE_H

/* sockstate.flags */
#define F_ESTABLISHED 1 /* reached ESTABLISHED */
#define F_FIN_QUEUED 2 /* left for CLOSE from FIN_WAIT1/2, CLOSING, LAST_ACK, TIME_WAIT: our FIN was queued */
#define F_RST_SENT 4
#define F_RST_RECEIVED 8
#define F_CLOSED 16        /* CLOSE seen: the lifecycle fields below are a snapshot */
#define F_FIRST_PENDING 32 /* the first state change waits for the tuple (bpf/state_event.h) */
#define F_TUPLE_FINAL 64   /* `t` is complete (CLOSE, ESTABLISHED with state events, an open report) */

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
    __u64 state_ts;  /* last state change (kept with state events only) */
    __u64 close_ts;  /* CLOSE (when F_CLOSED) */
    __u64 cgroup_id; /* from the socket, never from the current task */
    __u64 tx_bytes;  /* application bytes, computed at CLOSE */
    __u64 rx_bytes;
    struct tuple t;
    __u32 netns;
    __u32 pid;
    __s32 err_report; /* last sock:inet_sk_error_report errno */
    __s32 sk_err;     /* sk->sk_err at CLOSE */
    __s32 err_icmp;   /* an ICMP error queued while connecting (bpf/error.h), 0 if none */
    __u32 rst_reason;
    __u32 retransmits;
    __u32 isn_client; /* the connection's initial sequence numbers, set at ESTABLISHED (bpf/connid.h) */
    __u32 isn_server;
    __u8 role;
    __u8 last_state; /* the state it left for CLOSE */
    __u8 flags;
    __u8 pad[1];
    char comm[16];
    /* Open-connection reports (bpf/interim.h): what was reported so far. The pass takes the bytes
     * between these and the counters now; the CLOSE snapshot exchanges them for the final counts
     * (bpf/lifecycle.h), so every byte is reported once. A seeded socket starts them at its counters
     * when found (bpf/seed.h). */
    __u64 rep_tx;
    __u64 rep_rx;
    __u64 connect_ns;    /* connect latency (bpf/state.h), 0 unknown */
    __u64 rep_retrans;   /* 64-bit like the next: BPF's 32-bit atomics need alu32, which bcc's clang lacks */
    __u64 connect_taken; /* exchanged to 1 by whoever reports the connect latency first */
    /* at CLOSE (F_CLOSED): what the reports had taken, and the RTTs */
    __u64 close_rep_tx;
    __u64 close_rep_rx;
    __u32 close_rep_retrans;
    __u32 srtt_us;
    __u32 min_rtt_us;
    __u8 oflags; /* O_* */
    __u8 opad[3];
};

/* sockstate.oflags */
#define O_SEEDED 1          /* open before the agent found it (bpf/seed.h) */
#define O_REPORTED_BEFORE 2 /* at CLOSE: an interim report took the connect latency */

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
    /* the listener's cgroup, which its children share (sk_clone_lock() copies sk_cgrp_data): they
     * take it from here instead of reading it from the socket. Only while one listener holds the
     * key (cgroup_known): an SO_REUSEPORT group's listeners may belong to different cgroups, and
     * listeners seeded from /proc at start-up come without one. */
    __u64 cgroup_id;
    __u32 cgroup_known;
    __u32 pad;
};

#endif

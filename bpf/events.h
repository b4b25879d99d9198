/* The ONE kernel-to-user record of tcpscope (mirrored by agent/kernel/decode.py; a test checks
 * the mirror field by field against this file). Every event kind uses the same fixed-size record:
 * a common part (time, socket id, cgroup, process, tuple) and a few kind-specific words.
 * Fields are laid out by hand in natural alignment with no implicit padding, so the layout is the
 * same for clang's BPF target and for gcc on the host. */
#ifndef TCPSCOPE_EVENTS_H
#define TCPSCOPE_EVENTS_H

/* event kinds (tcpscope_event.kind) */
#define EV_LIFECYCLE 1
#define EV_STATE 2
#define EV_RETRANSMIT 3
#define EV_SYNACK 4
#define EV_RESET_SENT 5
#define EV_RESET_RECEIVED 6
#define EV_SOCKET_ERROR 7
#define EV_PROBE 8

/* roles and endings: numbered as tcpscope.v1.Role / tcpscope.v1.Ending */
#define ROLE_UNKNOWN 0
#define ROLE_ACTIVE 1
#define ROLE_PASSIVE 2
#define ENDING_NORMAL 1
#define ENDING_RESET_SENT 2
#define ENDING_RESET_RECEIVED 3
#define ENDING_ERROR 4

/* kernel-side loss reasons: index into the `losses` per-CPU array (names in decode.py) */
#define LOSS_OUTPUT_FULL 0     /* ring buffer (or perf buffer) had no room */
#define LOSS_SOCKET_MAP_FULL 1 /* per-socket map full at a socket's start: not tracked (sockets) */
#define LOSS_LISTENER_MAP_FULL 2
#define LOSS_NREASONS 3

/* flow accounting: index into the `flow_counts` per-CPU array (names in agent/kernel/flows.py).
 * Not losses: a connection that could not be aggregated is reported as its own lifecycle. */
#define FLOWC_AGGREGATED 0 /* ordinary connections added to a flow */
#define FLOWC_MAP_FULL 1   /* ordinary connections reported individually: the flow map was full */
#define FLOWC_NCOUNTS 2

#define FLOW_BUCKETS 32 /* log2 microsecond duration buckets (Flow.duration_us_log2) */

/* anomaly accounting (bpf/anomaly.h): index into the `anomaly_counts` per-CPU array (names in
 * agent/kernel/anomalies.py). Not losses: every anomaly is either an event or in an aggregate. */
#define ANOMC_INDIVIDUAL 0  /* sent as their own events (within the budgets) */
#define ANOMC_AGGREGATED 1  /* counted in their key's aggregate instead */
#define ANOMC_OVER_KEY 2    /* of those: past the per-key budget */
#define ANOMC_OVER_NODE 3   /* of those: past the node's budget */
#define ANOMC_OUTPUT_FULL 4 /* of those: within the budgets, but the buffer had no room */
#define ANOMC_COARSE 5      /* counted under a coarse key (no remote address, no server port) */
#define ANOMC_NO_KEY 6      /* no key at all (the map was full): sent as their own events */
#define ANOMC_NCOUNTS 7

/* anomaly_key.flags */
#define AK_ESTABLISHED 1   /* lifecycle: the connection was established */
#define AK_RETRANSMITTED 2 /* lifecycle: it retransmitted at least once */
#define AK_FIRST_SYNACK 4  /* SYN-ACK retransmit: its request's first (the handshake timed out once) */
#define AK_NO_SOCKET 8     /* reset sent: from no socket (a closed port) */
#define AK_COARSE 16       /* the remote address and the server port were left out: the map was near full */

struct tcpscope_event {
    __u64 ts_ns;       /* bpf_ktime_get_ns() (CLOCK_MONOTONIC); lifecycle: time of CLOSE */
    __u64 socket_id;   /* sock pointer XOR a random per-load key: never a kernel address */
    __u64 cgroup_id;   /* cgroup v2 id of the socket (sk->sk_cgrp_data), 0 when no socket */
    __u64 duration_ns; /* lifecycle: first seen -> CLOSE; state: time in the old state */
    __u64 tx_bytes;    /* lifecycle: application bytes sent and acked */
    __u64 rx_bytes;    /* lifecycle: application bytes received */
    __u32 netns;       /* network namespace inode, 0 when unknown */
    __u32 pid;         /* tgid of the owning process, 0 when unknown */
    __u8 saddr[16];    /* local address: IPv4 in the first 4 bytes, or IPv6 */
    __u8 daddr[16];    /* remote address */
    __u16 sport;       /* local port, host order */
    __u16 dport;       /* remote port, host order */
    __u16 family;      /* AF_INET or AF_INET6 */
    __u8 kind;         /* EV_* */
    __u8 role;         /* ROLE_* */
    __u8 state;        /* state: old state; others: socket state at the event (0 = unknown) */
    __u8 new_state;    /* state: new state; lifecycle: last state before CLOSE */
    __u8 ending;       /* lifecycle: ENDING_* */
    __u8 pad0;
    __s32 err;         /* lifecycle / socket error: errno */
    __u32 reason;      /* reset sent / lifecycle: kernel enum sk_rst_reason */
    __u32 retransmits; /* lifecycle: tcp_retransmit_skb count; synack: which of its request's (1 = first) */
    __u32 snd_cwnd;    /* probe */
    __u32 srtt_us;     /* probe */
    __u32 snd_wnd;     /* probe */
    __u32 data_len;    /* probe */
    __u32 isn_client;  /* the connection's initial sequence numbers once it is established, else 0 */
    __u32 isn_server;  /* (bpf/connid.h): hashed by the agent, never published */
    char comm[16];     /* owning process' comm, empty when unknown */
};

/* Aggregated ordinary connections (bpf/flow.h): the key and value of the two flow maps, read by
 * user space with batch lookups (agent/kernel/flows.py mirrors both; a test checks the mirror). */
struct flow_key {
    __u8 laddr[16];    /* local address, as in tcpscope_event.saddr */
    __u8 raddr[16];    /* remote address */
    __u64 cgroup_id;   /* the socket's cgroup v2 id */
    __u32 netns;       /* network namespace inode */
    __u16 server_port; /* PASSIVE: the local port; ACTIVE: the remote port */
    __u16 family;      /* AF_INET or AF_INET6 */
    __u8 role;         /* ROLE_ACTIVE or ROLE_PASSIVE */
    __u8 pad[7];
};

struct flow_val {
    __u64 connections;
    __u64 tx_bytes;
    __u64 rx_bytes;
    __u64 duration_sum_ns;
    __u64 first_close_ns; /* bpf_ktime_get_ns() of the earliest CLOSE */
    __u64 last_close_ns;  /* of the latest CLOSE */
    __u64 buckets[FLOW_BUCKETS];
    __u32 pid; /* owner of the last connection added */
    __u32 pad;
    char comm[16];
};

/* Anomalies past their budget (bpf/anomaly.h): the key and value of the two anomaly maps, read by
 * user space with batch lookups (agent/kernel/anomalies.py mirrors both; a test checks the mirror).
 * The key is an event's flow key plus what kind of anomaly it is and why. */
struct anomaly_key {
    __u8 laddr[16];    /* local address, as in tcpscope_event.saddr */
    __u8 raddr[16];    /* remote address (zero with AK_COARSE) */
    __u64 cgroup_id;   /* the socket's cgroup v2 id, 0 when no socket */
    __u32 netns;       /* network namespace inode, 0 when unknown */
    __s32 err;         /* lifecycle, socket error: errno */
    __u32 reason;      /* reset sent, lifecycle ending RESET_SENT: enum sk_rst_reason */
    __u16 server_port; /* ACTIVE: the remote port; otherwise the local port (0 with AK_COARSE) */
    __u16 family;
    __u8 kind;   /* EV_* of the events it stands for */
    __u8 role;   /* ROLE_* */
    __u8 state;  /* the event's state field (lifecycle: the last state before CLOSE) */
    __u8 ending; /* lifecycle: ENDING_* */
    __u8 flags;  /* AK_* */
    __u8 pad[3];
};

struct anomaly_val {
    __u64 count;     /* anomalies aggregated (not sent as events) this interval */
    __u64 exemplars; /* anomalies of this key sent as their own events this interval */
    __u64 first_ns;  /* bpf_ktime_get_ns() of the first one aggregated */
    __u64 last_ns;   /* of the last one aggregated */
    __u64 tx_bytes;  /* lifecycle: summed over the aggregated connections */
    __u64 rx_bytes;
    __u64 duration_sum_ns;
    __u64 retransmits;
    __u32 pid; /* owner of the last one aggregated */
    __u32 pad;
    char comm[16];
};

#endif

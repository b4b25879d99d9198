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
#define EV_OPEN 9 /* an open connection's progress since its last report (bpf/interim.h) */

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

/* open-connection reports: index into the `open_counts` per-CPU array (names in agent/kernel/openconn.py).
 * Not losses: every report is in a flow or an event (a full ring buffer counts as LOSS_OUTPUT_FULL). */
#define OPENC_AGGREGATED 0 /* reports of ordinary open connections added to a flow */
#define OPENC_EVENTS 1     /* reports emitted as their own EV_OPEN event */
#define OPENC_FLOW_FULL 2  /* of those, ordinary ones whose flow map was full */
#define OPENC_OVERSHOOT 3  /* closes that found more reported than the final count: clamped, never seen */
#define OPENC_NCOUNTS 4

/* tcpscope_event.open_flags */
#define OPEN_SEEDED 1          /* open before the agent found it: counted from then (bpf/seed.h) */
#define OPEN_REPORTED_BEFORE 2 /* lifecycle: interim reports carried its connect latency already */

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
    __u64 duration_ns; /* lifecycle: first seen -> CLOSE; state: time in the old state; open: age */
    __u64 tx_bytes;    /* lifecycle: application bytes sent and acked; open: since its last report */
    __u64 rx_bytes;    /* lifecycle: application bytes received; open: since its last report */
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
    __u32 retransmits; /* lifecycle: tcp_retransmit_skb count; open: since its last report;
                          synack: which of its request's (1 = first) */
    __u32 snd_cwnd;    /* probe */
    __u32 srtt_us;     /* probe, lifecycle (at CLOSE), open: smoothed RTT in us */
    __u32 snd_wnd;     /* probe */
    __u32 data_len;    /* probe */
    __u32 isn_client;  /* the connection's initial sequence numbers once it is established, else 0 */
    __u32 isn_server;  /* (bpf/connid.h): hashed by the agent, never published */
    char comm[16];     /* owning process' comm, empty when unknown */
    /* open reports and latency (bpf/interim.h, bpf/counters.h): lifecycle and open */
    __u64 reported_tx; /* lifecycle: of tx_bytes, reported before (interim reports; a seeded socket's
                        * bytes before it was found); open: reported up to and including this one */
    __u64 reported_rx;
    __u64 connect_ns;       /* lifecycle, open: connect latency (0 unknown; open: only in the first report) */
    __u32 reported_retrans; /* lifecycle: of retransmits, reported before; open: up to this one */
    __u32 min_rtt_us; /* lifecycle, open: tcp_sock.rtt_min (0 unknown); srtt_us holds the smoothed RTT */
    __u32 open_flags; /* OPEN_* */
    __u32 pad1;
};

/* A connection open before the agent started, to be found by bpf/seed.h: user space writes one into
 * the `seed_req` array (agent/kernel/openconn.py mirrors it; a test checks the mirror) and runs the
 * seeding program in the connection's network namespace. The result is the program's return value,
 * SEED_*. */
struct seed_req {
    __u8 laddr[16]; /* local address, as in tcpscope_event.saddr (v4-mapped for an IPv6 socket) */
    __u8 raddr[16]; /* remote address */
    __u16 lport;    /* host order */
    __u16 rport;
    __u16 family;   /* the socket's: AF_INET or AF_INET6 */
    __u8 role;      /* ROLE_PASSIVE when the local port is listening, else ROLE_ACTIVE */
    __u8 v4_lookup; /* look it up as IPv4 (an AF_INET socket, or AF_INET6 with v4-mapped addresses) */
    __u32 pid;      /* owner, from /proc/<pid>/fd; 0 unknown */
    __u32 pad;
    char comm[16];
};

#define SEED_NOT_FOUND 0 /* no such socket (closed meanwhile) */
#define SEED_ADDED 1
#define SEED_KNOWN 2    /* tracked already (a state change since the agent attached) */
#define SEED_FILTERED 3 /* outside the filters */
#define SEED_STATE 4    /* not a connection's state (a handshake, or closing meanwhile) */
#define SEED_FULL 5     /* the per-socket map is full (LOSS_SOCKET_MAP_FULL) */

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
    /* open connections (bpf/interim.h) and latency */
    __u64 open_connections;              /* open connections whose progress is in tx/rx_bytes */
    __u64 report_ns;                     /* bpf_ktime_get_ns() of the pass that added them */
    __u64 srtt_sum_us;                   /* one sample per connection per report */
    __u64 srtt_buckets[FLOW_BUCKETS];    /* log2 microseconds */
    __u64 connect_sum_ns;                /* one sample per connection, in its first report */
    __u64 connect_buckets[FLOW_BUCKETS]; /* log2 microseconds */
    __u32 min_rtt_us;                    /* lowest rtt_min among them, 0 none */
    __u32 pad2;
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

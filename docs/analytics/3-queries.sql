-- tcpscope in ClickHouse, part 3 of 3: the query pack (docs/analytics.md).
-- Run after 1-tables.sql and one of the 2-kafka-*.sql files. The views below hold the logic of
-- `tcpscope-tail --summary` (tail/summary.py, tail/resetcause.py, tcpscope/outcome.py): the same
-- counters per (client, server, via) row from the same events, through Services too (docs/services.md).
-- The queries at the end ("-- query: NAME") use them;
-- set the window's start first, e.g. in clickhouse-client:
--   SET param_since = '2026-12-07 09:00:00';   or   --param_since='2026-12-07 09:00:00'
-- Every table is read with FINAL: repeats of a record (at-least-once delivery) count once.

-- Who one end of a pair is, as the summary names it (tail/summary.py, Summarizer._party): from
-- the socket's own agent when it resolved the end (best), else from the peer's agent (fallback).
-- An end no pod owns that its own agent saw is named by its process (kind PROCESS) and, for a
-- server, its port. Returns (namespace, name, kind, process, port).
CREATE FUNCTION tcpscope_party AS (
    has_best, best_ip, best_port, best_kind, best_namespace, best_name, comm,
    has_fallback, fallback_ip, fallback_kind, fallback_namespace, fallback_name, is_server
) -> if(
    if(has_best AND best_kind != 'ENDPOINT_KIND_UNSPECIFIED' OR NOT has_fallback,
       best_kind = 'ENDPOINT_KIND_UNSPECIFIED' OR best_name = '',
       fallback_kind = 'ENDPOINT_KIND_UNSPECIFIED' OR fallback_name = ''),
    if(has_best AND best_name = '',
       tuple('', best_ip, if(comm != '', 'PROCESS', 'UNRESOLVED'), comm, if(is_server, toUInt32(best_port), toUInt32(0))),
       tuple('', if(has_best AND best_kind != 'ENDPOINT_KIND_UNSPECIFIED' OR NOT has_fallback, best_ip, fallback_ip),
             'UNRESOLVED', '', toUInt32(0))),
    if(has_best AND best_kind != 'ENDPOINT_KIND_UNSPECIFIED' OR NOT has_fallback,
       tuple(best_namespace, best_name, best_kind, '', toUInt32(0)),
       tuple(fallback_namespace, fallback_name, fallback_kind, '', toUInt32(0)))
);

-- The reason a socket gave for the RST it sent (tcpscope/outcome.py, reset_reason).
CREATE FUNCTION tcpscope_reset_reason AS (name, code) ->
    if(name != '', name, if(code != 0, concat('reason_', toString(code)), 'UNKNOWN'));

-- What a RST sent says of its sender (tail/resetcause.py, _sender_verdict): (cause, detail), from
-- the send's reason (its name, `reason_N` for a code without one, else '') and whether it was sent
-- from a full socket. From none (a closed port), a time-wait or a request socket, or for a protocol
-- reason: the peer's kernel; else the peer's application.
CREATE FUNCTION tcpscope_sender_verdict AS (reason, full_socket) ->
    multiIf(
        NOT full_socket, tuple('peer_kernel', if(reason != '', reason, 'no_socket')),
        reason IN ('NO_SOCKET', 'TCP_INVALID_ACK_SEQUENCE', 'TCP_RFC7323_PAWS', 'TCP_TOO_OLD_ACK',
                   'TCP_ACK_UNSENT_DATA', 'TCP_FLAGS', 'TCP_OLD_ACK', 'TCP_TIMEWAIT_SOCKET', 'INVALID_SYN',
                   'TCP_ABORT_ON_MEMORY', 'TCP_KEEPALIVE_TIMEOUT', 'ERROR')
            OR startsWith(reason, 'MPTCP_'), tuple('peer_kernel', reason),
        tuple('app', if(reason != '', reason, 'NOT_SPECIFIED'))
    );

-- Every socket the summary counts, one row per lifecycle, oriented client -> server. Left out, as
-- the summary leaves them out: listeners, self-connects, sockets older than the agent (no role),
-- and the kernel's duplicate children (a second server socket for one handshake, tcpscope/outcome.py).
-- id_rank and id_lone: the summary pairs the sockets of one connection_id in the order it read
-- them, the first client with the first server; a socket the other side has no partner for is
-- lone (its peer's agent set no id: it may still pair by 4-tuple).
CREATE VIEW tcpscope_sockets AS
SELECT
    *,
    if(connection_id = 0, 0,
       row_number() OVER (PARTITION BY connection_id, is_client ORDER BY agent_id, batch_seq, batch_index)) AS id_rank,
    connection_id != 0
        AND id_rank > if(is_client, countIf(NOT is_client) OVER (PARTITION BY connection_id),
                         countIf(is_client) OVER (PARTITION BY connection_id)) AS id_lone
FROM (
    SELECT
        concat(agent_id, '/', toString(batch_seq), '/', toString(batch_index)) AS id,
        agent_id, batch_seq, batch_index,
        node, socket_id, connection_id, time, role,
        role = 'ACTIVE' AS is_client,
        toUnixTimestamp64Nano(time) AS end_ns,
        toUnixTimestamp64Nano(time) - toInt64(duration_ns) AS start_ns,
        if(is_client, local_ip, remote_ip) AS client_ip,
        if(is_client, local_port, remote_port) AS client_port,
        if(is_client, remote_ip, local_ip) AS server_ip,
        if(is_client, remote_port, local_port) AS server_port,
        local_ip, local_port, local_kind, local_namespace, local_name,
        remote_ip, remote_port, remote_kind, remote_namespace, remote_name, remote_node,
        process_comm, duration_ns, tx_bytes, rx_bytes, ending, errno, last_state, retransmits,
        reset_reason, reset_reason_name
    FROM tcpscope_lifecycles FINAL
    WHERE last_state != 'LISTEN' AND remote_port != 0
      AND NOT (local_ip = remote_ip AND local_port = remote_port)
      AND role IN ('ACTIVE', 'PASSIVE')
      AND NOT (role = 'PASSIVE' AND last_state = 'SYN_RECV' AND ending = 'NORMAL' AND tx_bytes = 0 AND rx_bytes = 0)
);

-- A client socket and a server socket are one connection when their connection_id is the same
-- and not 0 (the agents fill it, docs/services.md: the two sockets of a connection through a
-- Service's NAT have different 4-tuples), the n-th client with the n-th server of the id. The rest
-- (id 0, or an id whose other side reported none) pair when they have the same 4-tuple and started
-- within 2 s of each other, never two ids: each the other's nearest by start time (the summary
-- pairs the nearest first; the two agree unless one 4-tuple is reused within 2 s). This view holds
-- the pairs by 4-tuple; tcpscope_connections groups by id.
CREATE VIEW tcpscope_socket_pairs AS
WITH
    candidates AS (
        SELECT c.id AS client_id, s.id AS server_id, abs(c.start_ns - s.start_ns) AS gap_ns
        FROM tcpscope_sockets AS c
        INNER JOIN tcpscope_sockets AS s
            ON c.client_ip = s.client_ip AND c.client_port = s.client_port
           AND c.server_ip = s.server_ip AND c.server_port = s.server_port
        WHERE c.is_client AND NOT s.is_client
          AND (c.connection_id = 0 OR c.id_lone) AND (s.connection_id = 0 OR s.id_lone)
          AND (c.connection_id = 0 OR s.connection_id = 0)
          AND abs(c.start_ns - s.start_ns) <= 2000000000
    ),
    nearest_server AS (SELECT client_id, argMin(server_id, gap_ns) AS server_id FROM candidates GROUP BY client_id),
    nearest_client AS (SELECT server_id, argMin(client_id, gap_ns) AS client_id FROM candidates GROUP BY server_id)
SELECT client_id, server_id
FROM nearest_server
INNER JOIN nearest_client USING (client_id, server_id);

-- The RST each socket received (lifecycles ending RESET_RECEIVED): the earliest report of it, the
-- socket's reset event when it has one within 2 s, else its lifecycle.
CREATE VIEW tcpscope_received_resets AS
WITH received AS (
    SELECT node, socket_id, local_ip, local_port, remote_ip, remote_port,
           toUnixTimestamp64Nano(time) AS t, state, toUInt8(1) AS hit
    FROM tcpscope_socket_events FINAL
    WHERE kind = 'reset' AND direction = 'RECEIVED'
)
SELECT
    id, node, socket_id, connection_id, local_ip, local_port, remote_ip, remote_port, remote_kind, remote_node,
    start_ns,
    if(has_event AND event_ns <= end_ns, event_ns, end_ns) AS time_ns,
    if(has_event AND event_ns <= end_ns, event_state, last_state) AS state
FROM (
    SELECT
        s.id AS id, any(s.node) AS node, any(s.socket_id) AS socket_id, any(s.connection_id) AS connection_id,
        any(s.local_ip) AS local_ip, any(s.local_port) AS local_port,
        any(s.remote_ip) AS remote_ip, any(s.remote_port) AS remote_port, any(s.remote_kind) AS remote_kind,
        any(s.remote_node) AS remote_node,
        any(s.start_ns) AS start_ns, any(s.end_ns) AS end_ns, any(s.last_state) AS last_state,
        countIf(r.hit = 1 AND abs(r.t - s.end_ns) <= 2000000000) > 0 AS has_event,
        minIf(r.t, r.hit = 1 AND abs(r.t - s.end_ns) <= 2000000000) AS event_ns,
        argMinIf(r.state, r.t, r.hit = 1 AND abs(r.t - s.end_ns) <= 2000000000) AS event_state
    FROM tcpscope_sockets AS s
    LEFT JOIN received AS r
        ON s.node = r.node AND s.socket_id = r.socket_id AND s.local_ip = r.local_ip
       AND s.local_port = r.local_port AND s.remote_ip = r.remote_ip AND s.remote_port = r.remote_port
    WHERE s.ending = 'RESET_RECEIVED'
    GROUP BY s.id
);

-- Who sent each received RST (docs/reset-cause.md, the rule in order): both ends' events joined.
-- A RST received by a socket with a connection_id is judged by the other socket reporting that
-- id (the "by id" part below: through a Service's NAT the two sockets' tuples differ, and a send
-- matches however far apart the nodes' clocks are); with id 0, or an id no other socket reported
-- to a pod or node address, by 4-tuple and time (the "by tuple" part).
CREATE VIEW tcpscope_reset_verdicts AS
WITH
    tuples AS (  -- every event of a socket with both ports known, for "the peer's agent saw it"
        SELECT node, socket_id, connection_id, local_ip, local_port, remote_ip, remote_port,
               toUnixTimestamp64Nano(time) AS t
        FROM tcpscope_lifecycles FINAL
        UNION ALL
        SELECT node, socket_id, connection_id, local_ip, local_port, remote_ip, remote_port,
               toUnixTimestamp64Nano(time) AS t
        FROM tcpscope_socket_events FINAL
    ),
    node_of_ip AS (  -- the node whose agent reports sockets with this local address
        SELECT local_ip AS ip, argMax(node, t) AS ip_node
        FROM (
            SELECT node, local_ip, t FROM tuples
            UNION ALL
            SELECT node, local_ip, toUnixTimestamp64Nano(time) AS t FROM tcpscope_flows FINAL
        )
        WHERE local_ip != '' AND node != ''
        GROUP BY local_ip
    ),
    watched AS (  -- nodes whose agent publishes to this topic
        SELECT node FROM tuples WHERE node != ''
        UNION DISTINCT SELECT node FROM tcpscope_flows FINAL WHERE node != ''
        UNION DISTINCT SELECT node FROM tcpscope_batches FINAL WHERE node != ''
    ),
    sends AS (  -- RSTs sent: reset events, and lifecycles ending RESET_SENT
        SELECT node, socket_id, connection_id, local_ip, local_port, remote_ip, remote_port,
               toUnixTimestamp64Nano(time) AS t,
               if(reason_name != '', reason_name, if(reason != 0, concat('reason_', toString(reason)), '')) AS reason,
               socket_id != 0 AND state NOT IN ('TIME_WAIT', 'NEW_SYN_RECV') AS full_socket,
               toUInt8(1) AS hit
        FROM tcpscope_socket_events FINAL
        WHERE kind = 'reset' AND direction = 'SENT'
        UNION ALL
        SELECT node, socket_id, connection_id, local_ip, local_port, remote_ip, remote_port,
               toUnixTimestamp64Nano(time) AS t,
               if(reset_reason_name != '', reset_reason_name,
                  if(reset_reason != 0, concat('reason_', toString(reset_reason)), '')) AS reason,
               true AS full_socket, toUInt8(1) AS hit
        FROM tcpscope_lifecycles FINAL
        WHERE ending = 'RESET_SENT' AND remote_port != 0
    ),
    loss_spans AS (  -- a batch's losses happened between the agent's previous batch and this one
        SELECT node, from_ns, to_ns, definite, possible, toUInt8(1) AS hit
        FROM (
            SELECT node, toUnixTimestamp64Nano(sent_time) AS to_ns,
                   max(toUnixTimestamp64Nano(sent_time)) OVER (
                       PARTITION BY agent_id ORDER BY batch_seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                   ) AS from_ns,
                   lost_kernel + lost_agent_buffer + lost_enrichment AS definite,
                   lost_kernel_skipped_runs AS possible
            FROM tcpscope_batches FINAL
        )
        WHERE (definite > 0 OR possible > 0) AND node != ''
    ),
    lives AS (
        SELECT node, socket_id, connection_id, local_ip, local_port, remote_ip, remote_port, ending,
               toUInt8(1) AS hit,
               toUnixTimestamp64Nano(time) - toInt64(duration_ns) AS start_ns, toUnixTimestamp64Nano(time) AS end_ns,
               tuple(agent_id, batch_seq, batch_index) AS arrival
        FROM tcpscope_lifecycles FINAL
        WHERE remote_port != 0
    ),
    r AS (
        SELECT rr.*, if(n.ip_node != '', n.ip_node, rr.remote_node) AS peer
        FROM tcpscope_received_resets AS rr
        LEFT JOIN node_of_ip AS n ON rr.remote_ip = n.ip
    ),
    -- by id ------------------------------------------------------------------------------------
    id_socks AS (  -- every socket that reported a connection id, and its last event's time
        SELECT connection_id, node, socket_id, max(t) AS last_ns, toUInt8(1) AS hit
        FROM tuples
        WHERE connection_id != 0 AND local_port != 0 AND remote_port != 0
        GROUP BY connection_id, node, socket_id
    ),
    id_lives AS (  -- each such socket's lifecycle (the first one read, as the summary takes it)
        SELECT connection_id, node, socket_id, argMin(tuple(start_ns, end_ns, ending), arrival) AS life,
               toUInt8(1) AS hit
        FROM lives
        WHERE connection_id != 0
        GROUP BY connection_id, node, socket_id
    ),
    node_offsets AS (  -- two nodes' clock offset (b's minus a's, a < b), from the latest connection
                       -- whose two lifecycles both reported its id, on the two nodes
        SELECT a, b, argMax(offset_ns, last_ns) AS offset_ns, toUInt8(1) AS hit
        FROM (
            SELECT connection_id, min(node) AS a, max(node) AS b,
                   argMax(start_ns, node) - argMin(start_ns, node) AS offset_ns, max(end_ns) AS last_ns
            FROM lives
            WHERE connection_id != 0
            GROUP BY connection_id
            HAVING count() = 2 AND uniqExact(node) = 2
        )
        GROUP BY a, b
    ),
    id_peer AS (  -- the peer: the other socket of the id, on another node first, then the latest
        SELECT r.id AS id,
               countIf(p.hit = 1 AND (p.node, p.socket_id) != (r.node, r.socket_id)) > 0 AS has_peer,
               argMaxIf(tuple(p.node, p.socket_id), tuple(p.node != r.node, p.last_ns),
                        p.hit = 1 AND (p.node, p.socket_id) != (r.node, r.socket_id)) AS peer_sock
        FROM r
        LEFT JOIN id_socks AS p ON p.connection_id = r.connection_id
        WHERE r.connection_id != 0
        GROUP BY r.id
    ),
    id_send AS (  -- the peer socket's earliest send of this connection: no time window
        SELECT r.id AS id, countIf(x.hit = 1 AND (x.node, x.socket_id) = ip.peer_sock) > 0 AS has_send,
               argMinIf(tuple(x.reason, x.full_socket), x.t, x.hit = 1 AND (x.node, x.socket_id) = ip.peer_sock) AS send,
               countIf(x.hit = 1 AND (x.node, x.socket_id) = (r.node, r.socket_id)) > 0 AS own_sent
        FROM r
        INNER JOIN id_peer AS ip ON ip.id = r.id
        LEFT JOIN sends AS x ON x.connection_id = r.connection_id
        WHERE ip.has_peer
        GROUP BY r.id
    ),
    id_clock AS (  -- the peer's lifecycle, and its clock minus ours: from the two sockets' starts,
                   -- else 0 on one node, else the two nodes' offset
        SELECT r.id AS id, any(ip.peer_sock) AS peer_sock, countIf(pl.hit = 1) > 0 AS has_life,
               anyIf(pl.life, pl.hit = 1) AS life,
               multiIf(countIf(pl.hit = 1) > 0 AND countIf(ol.hit = 1) > 0,
                           anyIf(pl.life.1, pl.hit = 1) - anyIf(ol.life.1, ol.hit = 1),
                       any(r.node) = any(ip.peer_sock.1), 0,
                       countIf(no.hit = 1) > 0,
                           if(any(r.node) = anyIf(no.a, no.hit = 1), 1, -1) * anyIf(no.offset_ns, no.hit = 1),
                       0) AS offset_ns
        FROM r
        INNER JOIN id_peer AS ip ON ip.id = r.id
        LEFT JOIN id_lives AS pl
            ON pl.connection_id = r.connection_id AND pl.node = ip.peer_sock.1 AND pl.socket_id = ip.peer_sock.2
        LEFT JOIN id_lives AS ol
            ON ol.connection_id = r.connection_id AND ol.node = r.node AND ol.socket_id = r.socket_id
        LEFT JOIN node_offsets AS no
            ON no.a = least(r.node, ip.peer_sock.1) AND no.b = greatest(r.node, ip.peer_sock.1)
        WHERE ip.has_peer
        GROUP BY r.id
    ),
    id_losses AS (  -- the peer node's losses around the RST, in the peer's clock
        SELECT c.id AS id,
               sumIf(l.definite, l.hit = 1 AND l.from_ns <= t_peer + 2000000000 AND l.to_ns >= t_peer - 2000000000)
                   AS definite,
               sumIf(l.possible, l.hit = 1 AND l.from_ns <= t_peer + 2000000000 AND l.to_ns >= t_peer - 2000000000)
                   AS possible
        FROM (SELECT k.*, r.time_ns + k.offset_ns AS t_peer FROM id_clock AS k INNER JOIN r ON r.id = k.id) AS c
        LEFT JOIN loss_spans AS l ON l.node = c.peer_sock.1
        GROUP BY c.id
    ),
    -- by tuple ---------------------------------------------------------------------------------
    peer_send AS (  -- the peer node's send for this connection nearest in time, within 2 s
        SELECT r.id AS id,
               countIf(x.hit = 1 AND abs(x.t - r.time_ns) <= 2000000000) > 0 AS has_send,
               argMinIf(tuple(x.reason, x.full_socket), abs(x.t - r.time_ns),
                        x.hit = 1 AND abs(x.t - r.time_ns) <= 2000000000) AS send
        FROM r
        LEFT JOIN sends AS x
            ON x.node = r.peer AND x.local_ip = r.remote_ip AND x.local_port = r.remote_port
           AND x.remote_ip = r.local_ip AND x.remote_port = r.local_port
        GROUP BY r.id
    ),
    peer_losses AS (
        SELECT r.id AS id,
               sumIf(l.definite, l.hit = 1 AND l.from_ns <= r.time_ns + 2000000000 AND l.to_ns >= r.time_ns - 2000000000) AS definite,
               sumIf(l.possible, l.hit = 1 AND l.from_ns <= r.time_ns + 2000000000 AND l.to_ns >= r.time_ns - 2000000000) AS possible
        FROM r
        LEFT JOIN loss_spans AS l ON l.node = r.peer
        GROUP BY r.id
    ),
    peer_seen AS (  -- the last event the peer's agent reported of its socket of this connection
        SELECT r.id AS id, countIf(e.node != '') > 0 AS seen, maxIf(e.t, e.node != '') AS seen_last_ns
        FROM r
        LEFT JOIN tuples AS e
            ON e.node = r.peer AND e.local_ip = r.remote_ip AND e.local_port = r.remote_port
           AND e.remote_ip = r.local_ip AND e.remote_port = r.local_port
        GROUP BY r.id
    ),
    peer_life AS (  -- the peer's socket of this connection: the start nearest ours, within 2 s
        SELECT r.id AS id, any(r.node) AS node, any(r.local_ip) AS local_ip, any(r.local_port) AS local_port,
               any(r.remote_ip) AS remote_ip, any(r.remote_port) AS remote_port,
               countIf(v.hit = 1 AND abs(v.start_ns - r.start_ns) <= 2000000000) > 0 AS has_life,
               argMinIf(tuple(v.end_ns, v.ending), abs(v.start_ns - r.start_ns),
                        v.hit = 1 AND abs(v.start_ns - r.start_ns) <= 2000000000) AS life
        FROM r
        LEFT JOIN lives AS v
            ON v.node = r.peer AND v.local_ip = r.remote_ip AND v.local_port = r.remote_port
           AND v.remote_ip = r.local_ip AND v.remote_port = r.local_port
        GROUP BY r.id
    ),
    own_send AS (  -- did our node send a RST for it around the time the peer's socket received one
        SELECT p.id AS id,
               countIf(x.hit = 1 AND abs(x.t - p.life.1) <= 2000000000) > 0 AS has_send
        FROM peer_life AS p
        LEFT JOIN sends AS x
            ON x.node = p.node AND x.local_ip = p.local_ip AND x.local_port = p.local_port
           AND x.remote_ip = p.remote_ip AND x.remote_port = p.remote_port
        GROUP BY p.id
    )
SELECT
    r.id AS id,
    r.time_ns AS time_ns,
    r.connection_id != 0 AND ip.has_peer AS by_id,
    multiIf(by_id, ic.peer_sock.1, r.connection_id != 0 AND r.remote_kind = 'SERVICE', '', r.peer) AS peer_node,
    multiIf(
        r.state = 'SYN_SENT', ('peer_kernel', 'refused'),
        -- by id
        by_id AND ids.has_send, tcpscope_sender_verdict(ids.send.1, ids.send.2),
        by_id AND il.definite > 0, ('unknown', 'peer_losses'),
        by_id AND il.possible > 0, ('unknown', 'peer_possible_losses'),
        by_id AND ic.has_life AND ic.life.2 - ic.offset_ns < r.time_ns,
            if(ic.life.3 = 'RESET_RECEIVED' AND NOT ids.own_sent, ('network', 'both_ends'), ('peer_kernel', 'peer_closed')),
        by_id, ('network', 'no_send_seen'),
        -- a ClusterIP's backend is known only from the backend's socket, which no agent reported
        r.connection_id != 0 AND r.remote_kind = 'SERVICE', ('unknown', 'backend_unseen'),
        -- by tuple
        r.peer = '' OR r.peer NOT IN (SELECT node FROM watched), ('unknown', 'unwatched_peer'),
        ps.has_send, tcpscope_sender_verdict(ps.send.1, ps.send.2),
        pl.definite > 0, ('unknown', 'peer_losses'),
        pl.possible > 0, ('unknown', 'peer_possible_losses'),
        NOT pe.seen OR pe.seen_last_ns < r.start_ns - 2000000000, ('unknown', 'peer_socket_unseen'),
        lf.has_life AND lf.life.1 < r.time_ns,
            if(lf.life.2 = 'RESET_RECEIVED' AND r.time_ns - lf.life.1 <= 2000000000 AND NOT os.has_send,
               ('network', 'both_ends'), ('peer_kernel', 'peer_closed')),
        ('network', 'no_send_seen')
    ) AS verdict,
    verdict.1 AS cause,
    verdict.2 AS detail
FROM r
LEFT JOIN id_peer AS ip ON ip.id = r.id
LEFT JOIN id_send AS ids ON ids.id = r.id
LEFT JOIN id_clock AS ic ON ic.id = r.id
LEFT JOIN id_losses AS il ON il.id = r.id
LEFT JOIN peer_send AS ps ON ps.id = r.id
LEFT JOIN peer_losses AS pl ON pl.id = r.id
LEFT JOIN peer_seen AS pe ON pe.id = r.id
LEFT JOIN peer_life AS lf ON lf.id = r.id
LEFT JOIN own_send AS os ON os.id = r.id;

-- One row per connection: its client socket, its server socket, or both; how it ended (the
-- client's view decides, tcpscope/outcome.py) and who sent the RST that ended it (network if
-- either end received one that nobody sent, both_ends when both did, else the earliest received).
-- `via`: the Service (or node port) the client connected to, when that is not the server's own
-- address (kube-proxy's NAT) or is a Service's; `server` is then the backend, or the Service when
-- no backend socket was reported (a refused or timed-out connect, a backend no agent watches).
CREATE VIEW tcpscope_connections AS
WITH
    client_flow_triples AS (
        SELECT DISTINCT local_ip, remote_ip, remote_port FROM tcpscope_flows FINAL WHERE role = 'ACTIVE'
    ),
    flow_clients AS (  -- client addresses whose agent reported flows
        SELECT DISTINCT local_ip FROM tcpscope_flows FINAL WHERE role = 'ACTIVE'
    ),
    sockets AS (
        SELECT s.*, v.cause AS cause, v.detail AS detail, v.time_ns AS reset_ns,
               multiIf(s.connection_id != 0 AND NOT s.id_lone,
                           concat('cid:', toString(s.connection_id), '/', toString(s.id_rank)),
                       p.client_id != '', p.client_id, s.id) AS conn
        FROM tcpscope_sockets AS s
        LEFT JOIN tcpscope_socket_pairs AS p ON s.id = p.server_id
        LEFT JOIN tcpscope_reset_verdicts AS v ON s.id = v.id
    ),
    grouped AS (
        SELECT
            conn,
            countIf(is_client) > 0 AS has_client,
            countIf(NOT is_client) > 0 AS has_server,
            min(start_ns) AS first_ns,
            max(end_ns) AS last_ns,
            anyIf(local_ip, is_client) AS c_local_ip, anyIf(local_port, is_client) AS c_local_port,
            anyIf(local_kind, is_client) AS c_local_kind, anyIf(local_namespace, is_client) AS c_local_namespace,
            anyIf(local_name, is_client) AS c_local_name,
            anyIf(remote_ip, is_client) AS c_remote_ip, anyIf(remote_port, is_client) AS c_remote_port,
            anyIf(remote_kind, is_client) AS c_remote_kind,
            anyIf(remote_namespace, is_client) AS c_remote_namespace, anyIf(remote_name, is_client) AS c_remote_name,
            anyIf(process_comm, is_client) AS c_comm,
            anyIf(server_ip, is_client) AS c_server_ip, anyIf(server_port, is_client) AS c_server_port,
            anyIf(client_ip, is_client) AS c_client_ip,
            anyIf(ending, is_client) AS c_ending, anyIf(errno, is_client) AS c_errno,
            anyIf(last_state, is_client) AS c_last_state, anyIf(retransmits, is_client) AS c_retransmits,
            anyIf(reset_reason, is_client) AS c_reset_reason, anyIf(reset_reason_name, is_client) AS c_reset_reason_name,
            anyIf(tx_bytes, is_client) AS c_tx_bytes, anyIf(rx_bytes, is_client) AS c_rx_bytes,
            anyIf(duration_ns, is_client) AS c_duration_ns,
            anyIf(cause, is_client) AS c_cause, anyIf(detail, is_client) AS c_detail, anyIf(reset_ns, is_client) AS c_reset_ns,
            anyIf(local_ip, NOT is_client) AS s_local_ip, anyIf(local_port, NOT is_client) AS s_local_port,
            anyIf(local_kind, NOT is_client) AS s_local_kind, anyIf(local_namespace, NOT is_client) AS s_local_namespace,
            anyIf(local_name, NOT is_client) AS s_local_name,
            anyIf(remote_ip, NOT is_client) AS s_remote_ip, anyIf(remote_kind, NOT is_client) AS s_remote_kind,
            anyIf(remote_namespace, NOT is_client) AS s_remote_namespace, anyIf(remote_name, NOT is_client) AS s_remote_name,
            anyIf(process_comm, NOT is_client) AS s_comm,
            anyIf(server_ip, NOT is_client) AS s_server_ip, anyIf(server_port, NOT is_client) AS s_server_port,
            anyIf(client_ip, NOT is_client) AS s_client_ip, anyIf(connection_id, NOT is_client) AS s_connection_id,
            anyIf(ending, NOT is_client) AS s_ending, anyIf(errno, NOT is_client) AS s_errno,
            anyIf(retransmits, NOT is_client) AS s_retransmits,
            anyIf(reset_reason, NOT is_client) AS s_reset_reason, anyIf(reset_reason_name, NOT is_client) AS s_reset_reason_name,
            anyIf(tx_bytes, NOT is_client) AS s_tx_bytes, anyIf(rx_bytes, NOT is_client) AS s_rx_bytes,
            anyIf(duration_ns, NOT is_client) AS s_duration_ns,
            anyIf(cause, NOT is_client) AS s_cause, anyIf(detail, NOT is_client) AS s_detail, anyIf(reset_ns, NOT is_client) AS s_reset_ns
        FROM sockets
        GROUP BY conn
    )
SELECT
    *,
    tcpscope_party(has_client, c_local_ip, c_local_port, c_local_kind, c_local_namespace, c_local_name, c_comm,
                   has_server, s_remote_ip, s_remote_kind, s_remote_namespace, s_remote_name, false) AS client,
    tcpscope_party(has_server, s_local_ip, s_local_port, s_local_kind, s_local_namespace, s_local_name, s_comm,
                   has_client, c_remote_ip, c_remote_kind, c_remote_namespace, c_remote_name, true) AS server_named,
    -- the server's own port (a backend's target port); the client's remote port without a server socket
    if(has_server, s_server_port, c_server_port) AS server_port,
    -- a host's client to an address no agent named: still one row per server port
    if(client.3 = 'PROCESS' AND server_named.3 = 'UNRESOLVED' AND server_named.5 = 0,
       tuple(server_named.1, server_named.2, server_named.3, server_named.4,
             if(has_client, c_server_port, s_server_port)),
       server_named) AS server,
    -- through NAT: the address the client connected to, named as its agent resolved it, with its port
    has_client AND (has_server AND (c_remote_ip, c_remote_port) != (s_local_ip, s_local_port)
                    OR c_remote_kind = 'SERVICE') AS through_nat,
    if(through_nat,
       tcpscope_party(false, '', 0, '', '', '', '', true, c_remote_ip, c_remote_kind, c_remote_namespace, c_remote_name,
                      false),
       tuple('', '', '', '', toUInt32(0))) AS via_named,
    tuple(via_named.1, via_named.2, via_named.3, if(through_nat, c_remote_port, toUInt32(0))) AS via,
    if(has_client, c_last_state NOT IN ('SYN_SENT', 'TCP_STATE_UNSPECIFIED', 'CLOSE') OR has_server, true) AS established,
    multiIf(
        has_client AND NOT established AND (c_errno = 111 OR c_ending = 'RESET_RECEIVED'), 'refused',
        has_client AND NOT established AND c_errno = 110, 'timeout',
        has_client AND NOT established, 'failed',
        if(has_client, c_ending = 'RESET_SENT', s_ending = 'RESET_RECEIVED'), 'client_reset',
        if(has_client, c_ending = 'RESET_RECEIVED', s_ending = 'RESET_SENT'), 'server_reset',
        if(has_client, c_ending = 'ERROR' AND c_errno = 110, s_ending = 'ERROR' AND s_errno = 110), 'timeout',
        'ok'
    ) AS outcome,
    -- the client's RST decides when it is network and the server's is not, or when it came first
    (c_cause = 'network' OR s_cause != 'network') AND c_cause != '' AND (s_cause = '' OR c_reset_ns <= s_reset_ns)
        OR c_cause = 'network' AND s_cause != 'network' AS client_decides,
    if(client_decides, c_cause, s_cause) AS cause,
    -- both ends received a RST nobody sent: both_ends, whichever came first by the nodes' clocks
    if(c_cause = 'network' AND s_cause = 'network', 'both_ends', if(client_decides, c_detail, s_detail)) AS cause_detail,
    -- a server's socket whose client counted the connection in a flow: not a second connection. With
    -- an id, the client's own socket would have joined it: the client's agent, which reports flows of
    -- that address, aggregated it, maybe under a Service's address
    NOT has_client AND ((s_client_ip, s_server_ip, s_server_port) IN (SELECT * FROM client_flow_triples)
                        OR s_connection_id != 0 AND s_client_ip IN (SELECT * FROM flow_clients)) AS absorbed,
    if(has_client, c_tx_bytes, s_rx_bytes) AS client_sent_bytes,
    if(has_client, c_rx_bytes, s_tx_bytes) AS server_sent_bytes,
    if(has_client, c_duration_ns, s_duration_ns) AS duration_ns
FROM grouped;

-- What each pair row counts, over connections that closed since `since` (a flow: its last close):
-- one row per connection, and one per flow (ordinary connections the agents aggregated). A flow
-- counts from the client's side whenever the client's agent reported flows of that client address
-- (so through a Service, where the client's flows name the ClusterIP and the backends' the backend,
-- once, under the Service), else from the server's. A server's flow from a node's address (a
-- NodePort's SNAT) first gives up the connections watched clients' flows to that node's address
-- already counted (the summary's order: by client address, server address and port, then as
-- read). A flow of connections that were all still open when it was read (connections 0: their
-- bytes so far, docs/kafka.md "Open connections") is a row with closed = 0 at the time it was read:
-- bytes, no connection. A parameterized view: tcpscope_pair_rows(since = '2026-12-07 09:00:00').
CREATE VIEW tcpscope_pair_rows AS
WITH
    flow_clients AS (  -- client addresses whose agent reported flows
        SELECT DISTINCT local_ip FROM tcpscope_flows FINAL WHERE role = 'ACTIVE'
    ),
    snat_pools AS (  -- connections watched clients' flows in the window sent to each node's address
        SELECT remote_ip, sum(connections) AS pool
        FROM tcpscope_flows FINAL
        WHERE role = 'ACTIVE' AND remote_kind = 'NODE' AND last_close >= {since:DateTime64(9, 'UTC')}
        GROUP BY remote_ip
    ),
    counted_flows AS (
        SELECT f.*,
               f.role = 'PASSIVE' AND f.remote_kind = 'NODE' AS from_node,
               -- the pool left when this flow's turn comes, and the part of the flow it takes
               greatest(toInt64(pool) - toInt64(sum(if(from_node, f.connections, 0)) OVER (
                   PARTITION BY f.remote_ip, from_node ORDER BY f.local_ip, f.local_port, f.agent_id, f.batch_seq, f.batch_index
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)), 0) AS pool_left,
               toUInt64(if(from_node, least(toInt64(f.connections), pool_left), 0)) AS taken,
               toUInt64(f.connections - taken) AS counted
        FROM tcpscope_flows AS f FINAL
        LEFT JOIN snat_pools AS sp ON sp.remote_ip = f.remote_ip
        WHERE (f.last_close >= {since:DateTime64(9, 'UTC')} OR (f.connections = 0 AND f.time >= {since:DateTime64(9, 'UTC')}))
          AND (f.role = 'ACTIVE' OR (f.role = 'PASSIVE' AND f.remote_ip NOT IN (SELECT * FROM flow_clients)))
    )
SELECT
    client.1 AS client_namespace, client.2 AS client_name, client.3 AS client_kind,
    client.4 AS client_process, client.5 AS client_port,
    server.1 AS server_namespace, server.2 AS server_name, server.3 AS server_kind,
    server.4 AS server_process, server.5 AS server_party_port,
    via.1 AS via_namespace, via.2 AS via_name, via.3 AS via_kind, via.4 AS via_port,
    server_port, first_ns, last_ns,
    toUInt64(established AND NOT absorbed) AS connections,
    toUInt64(established AND cause != 'network' AND outcome = 'client_reset') AS client_resets,
    toUInt64(established AND cause != 'network' AND outcome = 'server_reset') AS server_resets,
    toUInt64(established AND cause = 'network') AS network_resets,
    toUInt64(NOT established AND outcome = 'refused') AS refused,
    toUInt64(outcome = 'timeout' AND NOT (established AND cause = 'network')) AS timeouts,
    toUInt64(established AND (c_retransmits > 0 OR s_retransmits > 0)) AS retransmits,
    toUInt64(NOT established AND outcome = 'failed') AS failed,
    toUInt64(0) AS flow_connections,
    if(client_resets = 1, map(if(has_client, tcpscope_reset_reason(c_reset_reason_name, c_reset_reason), 'UNKNOWN'), toUInt64(1)),
       map()) AS client_reset_reasons,
    if(server_resets = 1, map(if(has_server, tcpscope_reset_reason(s_reset_reason_name, s_reset_reason), 'UNKNOWN'), toUInt64(1)),
       map()) AS server_reset_reasons,
    cause AS reset_cause,
    cause_detail AS reset_cause_detail,
    if(cause != '', map(concat(cause, '/', cause_detail), toUInt64(1)), map()) AS reset_causes,
    client_sent_bytes, server_sent_bytes,
    -- this connection's duration in the flows' log2 histogram (bucket i: [2^i, 2^(i+1)) us)
    if(established AND NOT absorbed,
       arrayMap(i -> toUInt64(i = if(intDiv(duration_ns, 1000) < 2, 0, least(31, toUInt32(floor(log2(intDiv(duration_ns, 1000))))))),
                range(32)),
       []) AS duration_us_log2,
    if(established AND NOT absorbed, duration_ns, 0) AS duration_sum_ns,
    toUInt8(1) AS closed
FROM tcpscope_connections
WHERE last_ns >= toUnixTimestamp64Nano({since:DateTime64(9, 'UTC')})
UNION ALL
SELECT
    client.1, client.2, client.3, client.4, client.5,
    server_named.1, server_named.2, server_named.3, server_named.4,
    if(client.3 = 'PROCESS' AND server_named.3 = 'UNRESOLVED' AND server_named.5 = 0, port, server_named.5),
    via.1, via.2, via.3, via.4,
    port,
    toUnixTimestamp64Nano(if(connections > 0, first_close, time)),
    toUnixTimestamp64Nano(if(connections > 0, last_close, time)),
    counted, 0, 0, 0, 0, 0, 0, 0, counted,
    map(), map(), '', '', map(),
    -- a flow partly given up to a NodePort's clients: its bytes and durations in proportion, the
    -- histogram less the part taken, from its lowest buckets; open connections only: their bytes
    if(connections = 0, if(is_client, tx_bytes, rx_bytes),
       intDiv(if(is_client, tx_bytes, rx_bytes) * counted, greatest(connections, 1))),
    if(connections = 0, if(is_client, rx_bytes, tx_bytes),
       intDiv(if(is_client, rx_bytes, tx_bytes) * counted, greatest(connections, 1))),
    if(taken = 0, duration_us_log2,
       arrayMap((n, before) -> toUInt64(greatest(toInt64(n) - greatest(toInt64(taken) - toInt64(before), 0), 0)),
                duration_us_log2, arrayPushFront(arrayPopBack(arrayCumSum(duration_us_log2)), toUInt64(0)))),
    intDiv(duration_sum_ns * counted, greatest(connections, 1)),
    toUInt8(connections > 0)
FROM (
    SELECT *,
        role = 'ACTIVE' AS is_client,
        if(is_client, remote_port, local_port) AS port,
        if(is_client,
           tcpscope_party(true, local_ip, local_port, local_kind, local_namespace, local_name, process_comm,
                          false, '', '', '', '', false),
           tcpscope_party(false, '', 0, '', '', '', '', true, remote_ip, remote_kind, remote_namespace, remote_name, false))
            AS client,
        if(is_client,
           tcpscope_party(false, '', 0, '', '', '', '', true, remote_ip, remote_kind, remote_namespace, remote_name, true),
           tcpscope_party(true, local_ip, local_port, local_kind, local_namespace, local_name, process_comm,
                          false, '', '', '', '', true)) AS server_named,
        -- the client's flows to a Service: via the Service and its port
        if(is_client AND remote_kind = 'SERVICE',
           tcpscope_party(false, '', 0, '', '', '', '', true, remote_ip, remote_kind, remote_namespace, remote_name, false),
           tuple('', '', '', '', toUInt32(0))) AS via_named,
        tuple(via_named.1, via_named.2, via_named.3, if(via_named.3 != '', remote_port, toUInt32(0))) AS via
    FROM counted_flows
    WHERE counted > 0 OR connections = 0
);

-- The window's start for the queries below: everything, until you set your own.
SET param_since = '1970-01-01 00:00:00';

-- query: pairs
-- Per (client, server, via): connections, client, server and network resets, refused, timeouts,
-- ... exactly the counters of `tcpscope-tail --summary` over connections that closed since {since}.
-- Through a Service: the backend as server and the Service as via (via_kind 'SERVICE', via_port the
-- Service port), or the Service as server too when no backend socket was reported; via_kind '' on
-- rows of connections made straight to the server.
SELECT
    client_namespace, client_name, client_kind, client_process, client_port,
    server_namespace, server_name, server_kind, server_process, server_party_port,
    via_namespace, via_name, via_kind, via_port,
    sum(connections) AS connections,
    sum(client_resets) AS client_resets,
    sum(server_resets) AS server_resets,
    sum(network_resets) AS network_resets,
    sum(refused) AS refused,
    sum(timeouts) AS timeouts,
    sum(retransmits) AS retransmits,
    sum(failed) AS failed,
    sum(flow_connections) AS flow_connections,
    arraySort(groupUniqArray(server_port)) AS server_ports,
    sumMap(client_reset_reasons) AS client_reset_reasons,
    sumMap(server_reset_reasons) AS server_reset_reasons,
    sumMap(reset_causes) AS reset_causes,
    fromUnixTimestamp64Nano(min(first_ns), 'UTC') AS first_seen,
    fromUnixTimestamp64Nano(max(last_ns), 'UTC') AS last_seen
FROM tcpscope_pair_rows(since = {since:DateTime64(9, 'UTC')})
WHERE closed = 1  -- connections that closed (a flow of open connections only carries bytes so far)
GROUP BY client_namespace, client_name, client_kind, client_process, client_port,
         server_namespace, server_name, server_kind, server_process, server_party_port,
         via_namespace, via_name, via_kind, via_port
ORDER BY client_resets + server_resets + network_resets + refused + timeouts + failed DESC, connections DESC,
         client_namespace, client_name, server_namespace, server_name, via_namespace, via_name, via_port;

-- query: reset_causes
-- Connections that ended with a RST received, per pair, by who sent it (docs/reset-cause.md).
SELECT
    client_namespace, client_name, server_namespace, server_name, via_namespace, via_name,
    reset_cause, reset_cause_detail,
    count() AS connections
FROM tcpscope_pair_rows(since = {since:DateTime64(9, 'UTC')})
WHERE reset_cause != ''
GROUP BY client_namespace, client_name, server_namespace, server_name, via_namespace, via_name,
         reset_cause, reset_cause_detail
ORDER BY connections DESC, client_namespace, client_name, server_namespace, server_name, via_namespace, via_name,
         reset_cause, reset_cause_detail;

-- query: refused_and_timeouts
-- Connects that failed, per pair and server port: refused (nothing listened), timed out
-- (in the handshake or later), failed for another reason. Through a Service whose backend no agent
-- reported (a refused or timed-out connect never has a backend socket): the Service and its port.
SELECT
    client_namespace, client_name, server_namespace, server_name, via_namespace, via_name, server_port,
    sum(refused) AS refused,
    sum(timeouts) AS timeouts,
    sum(failed) AS failed
FROM tcpscope_pair_rows(since = {since:DateTime64(9, 'UTC')})
GROUP BY client_namespace, client_name, server_namespace, server_name, via_namespace, via_name, server_port
HAVING refused + timeouts + failed > 0
ORDER BY refused + timeouts + failed DESC, client_namespace, client_name, server_namespace, server_name,
         via_namespace, via_name, server_port;

-- query: bytes_per_minute
-- Application bytes each way per pair per minute, counted in the minute the connection closed
-- (a flow's connections: in the minute of its last close; the bytes so far of ordinary connections
-- still open: in the minute they were read), each connection once, each byte once.
SELECT
    toStartOfMinute(fromUnixTimestamp64Nano(last_ns, 'UTC')) AS minute,
    client_namespace, client_name, server_namespace, server_name, via_namespace, via_name,
    sum(connections) AS connections,
    sum(client_sent_bytes) AS client_sent_bytes,
    sum(server_sent_bytes) AS server_sent_bytes
FROM tcpscope_pair_rows(since = {since:DateTime64(9, 'UTC')}) AS p
WHERE p.connections > 0 OR (p.closed = 0 AND p.client_sent_bytes + p.server_sent_bytes > 0)
GROUP BY minute, client_namespace, client_name, server_namespace, server_name, via_namespace, via_name
ORDER BY minute, client_namespace, client_name, server_namespace, server_name, via_namespace, via_name;

-- query: durations
-- Connection duration per pair from flows' histograms and lifecycles together: every connection
-- in the flows' log2 buckets, so p50 and p99 are ranges [low, high) in microseconds (within a
-- factor of two); the mean is exact.
SELECT
    client_namespace, client_name, server_namespace, server_name, via_namespace, via_name,
    arraySum(histogram) AS connections,
    arrayFirstIndex(c -> c >= 0.50 * connections, arrayCumSum(histogram)) - 1 AS p50_bucket,
    arrayFirstIndex(c -> c >= 0.99 * connections, arrayCumSum(histogram)) - 1 AS p99_bucket,
    if(p50_bucket = 0, 0, pow(2, p50_bucket)) AS p50_low_us,
    pow(2, p50_bucket + 1) AS p50_high_us,
    if(p99_bucket = 0, 0, pow(2, p99_bucket)) AS p99_low_us,
    pow(2, p99_bucket + 1) AS p99_high_us,
    sum_ns / connections / 1000 AS mean_us
FROM (
    SELECT client_namespace, client_name, server_namespace, server_name, via_namespace, via_name,
           sumForEach(duration_us_log2) AS histogram, sum(duration_sum_ns) AS sum_ns
    FROM tcpscope_pair_rows(since = {since:DateTime64(9, 'UTC')}) AS p
    WHERE p.connections > 0
    GROUP BY client_namespace, client_name, server_namespace, server_name, via_namespace, via_name
)
ORDER BY client_namespace, client_name, server_namespace, server_name, via_namespace, via_name;

-- query: losses
-- Events lost, over every batch in the window: the figures of the summary's loss line. Definite
-- losses (kernel, agent_buffer, enrichment) and possible ones (kernel_skipped_runs) apart; by reason.
SELECT
    count() AS batches,
    sum(lost_kernel) AS kernel,
    sum(lost_agent_buffer) AS agent_buffer,
    sum(lost_enrichment) AS enrichment,
    sum(lost_kernel_skipped_runs) AS kernel_skipped_runs,
    sum(lost_sockets_untracked) AS sockets_untracked,
    sumMap(lost_by_reason) AS by_reason
FROM tcpscope_batches FINAL
WHERE sent_time >= {since:DateTime64(9, 'UTC')};

-- query: losses_per_node
-- The same per node: zero definite losses on a node means every event its kernel produced is in
-- the tables; last_batch says the agent is alive (an idle agent still sends one every 10 s).
SELECT
    node,
    count() AS batches,
    sum(lost_kernel) + sum(lost_agent_buffer) + sum(lost_enrichment) AS lost,
    sum(lost_kernel) AS kernel,
    sum(lost_agent_buffer) AS agent_buffer,
    sum(lost_enrichment) AS enrichment,
    sum(lost_kernel_skipped_runs) AS kernel_skipped_runs,
    sum(lost_sockets_untracked) AS sockets_untracked,
    sumMap(lost_by_reason) AS by_reason,
    sum(unobserved_windows) AS unobserved_windows,
    max(sent_time) AS last_batch,
    argMax(clock_offset_ns, sent_time) AS clock_offset_ns,
    argMax(clock_offset_error_ns, sent_time) AS clock_offset_error_ns
FROM tcpscope_batches FINAL
WHERE sent_time >= {since:DateTime64(9, 'UTC')}
GROUP BY node
ORDER BY lost DESC, node;

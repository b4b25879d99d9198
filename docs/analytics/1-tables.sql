-- tcpscope in ClickHouse, part 1 of 3: the tables (docs/analytics.md).
-- Run this file first, then 2-kafka-protobuf.sql or 2-kafka-json.sql, then 3-queries.sql:
--   clickhouse-client --multiquery < docs/analytics/1-tables.sql
--
-- Two Null-engine streams receive every decoded record, whatever the Kafka value format (the
-- files 2-kafka-*.sql feed them); materialized views copy each kind of event into its own
-- ReplacingMergeTree table. Null tables store nothing: they only hand their rows to the views.
--
-- Deduplication: at-least-once delivery repeats records (docs/kafka.md). A repeat carries the same
-- (agent_id, batch_seq, batch_index) and byte-identical content, so every table is a
-- ReplacingMergeTree ordered by that key, and the queries read it with FINAL. Its partition key
-- comes from the event's own time, so a repeat lands in the partition of its first copy (unless a
-- resend's clock correction moves it across a month's end).
--
-- Times: the streams carry each agent's own times; the views into the stored tables put them on the
-- collector's clock, as tcpscope-tail shows them (tail/clock.py), with the functions below.

-- What readers subtract from an agent's times (tail/clock.py, docs/kafka.md "Clocks"): the agent's
-- clock offset the collector measured (EventBatch.collector), once it is bounded, at least 50 ms and
-- larger than its error; else 0. The collector puts the same figure in the `clock-offset-ns` header
-- of the batch's event records (the streams' `clock_correction_ns`); the views below subtract it,
-- so every time in the stored tables is on the collector's clock, `clock_correction_ns` beside it.
CREATE FUNCTION tcpscope_clock_correction AS (offset_ns, error_ns, bounded) ->
    if(bounded AND abs(offset_ns) >= 50000000 AND abs(offset_ns) > error_ns, offset_ns, 0);

-- An agent's time (DateTime64(9)) on the collector's clock: `correction_ns` less; an unset time stays unset.
CREATE FUNCTION tcpscope_corrected AS (t, correction_ns) ->
    if(toUnixTimestamp64Nano(t) = 0, t, fromUnixTimestamp64Nano(toUnixTimestamp64Nano(t) - correction_ns, 'UTC'));

CREATE TABLE tcpscope_event_stream
(
    agent_id String,
    batch_seq UInt64,
    batch_index UInt32,
    schema_version UInt32,
    time DateTime64(9, 'UTC'),
    clock_correction_ns Int64,
    node String,
    socket_id UInt64,
    connection_id UInt64,
    local_ip String,
    local_port UInt32,
    local_kind String,
    local_namespace String,
    local_name String,
    local_uid String,
    local_labels Map(String, String),
    local_container String,
    local_container_id String,
    local_workload_kind String,
    local_workload_name String,
    local_node String,
    -- the Service ports a server's end is an endpoint of (Endpoint.services, --resolve-backends)
    local_services Nested(namespace String, name String, port UInt32),
    remote_ip String,
    remote_port UInt32,
    remote_kind String,
    remote_namespace String,
    remote_name String,
    remote_uid String,
    remote_labels Map(String, String),
    remote_workload_kind String,
    remote_workload_name String,
    remote_node String,
    process_pid UInt32,
    process_comm String,
    process_cgroup_id UInt64,
    process_cgroup_path String,
    kind String,
    lifecycle_role String,
    lifecycle_duration_ns UInt64,
    lifecycle_tx_bytes UInt64,
    lifecycle_rx_bytes UInt64,
    lifecycle_ending String,
    lifecycle_errno Int32,
    lifecycle_errno_name String,
    lifecycle_last_state String,
    lifecycle_retransmits UInt32,
    lifecycle_reset_reason UInt32,
    lifecycle_reset_reason_name String,
    lifecycle_tracked_mid_life Bool,
    state_change_old_state String,
    state_change_new_state String,
    state_change_time_in_old_state_ns UInt64,
    retransmit_state String,
    reset_direction String,
    reset_state String,
    reset_reason UInt32,
    reset_reason_name String,
    socket_error_errno Int32,
    socket_error_errno_name String,
    socket_error_state String,
    probe_snd_cwnd UInt32,
    probe_srtt_us UInt32,
    probe_snd_wnd UInt32,
    probe_data_len UInt32,
    flow_role String,
    flow_connections UInt64,
    flow_tx_bytes UInt64,
    flow_rx_bytes UInt64,
    flow_duration_us_log2 Array(UInt64),
    flow_duration_sum_ns UInt64,
    flow_first_close DateTime64(9, 'UTC'),
    flow_last_close DateTime64(9, 'UTC'),
    flow_interval_ns UInt64,
    flow_source String,
    anomalies_kind String,
    anomalies_count UInt64,
    anomalies_exemplars UInt64,
    anomalies_first DateTime64(9, 'UTC'),
    anomalies_last DateTime64(9, 'UTC'),
    anomalies_interval_ns UInt64,
    anomalies_role String,
    anomalies_state String,
    anomalies_ending String,
    anomalies_errno Int32,
    anomalies_errno_name String,
    anomalies_reason UInt32,
    anomalies_reason_name String,
    anomalies_established Bool,
    anomalies_retransmitted Bool,
    anomalies_first_of_request Bool,
    anomalies_no_socket Bool,
    anomalies_coarse Bool,
    anomalies_tx_bytes UInt64,
    anomalies_rx_bytes UInt64,
    anomalies_duration_sum_ns UInt64,
    anomalies_retransmits UInt64
)
ENGINE = Null;

CREATE TABLE tcpscope_batch_stream
(
    agent_id String,
    batch_seq UInt64,
    node String,
    schema_version UInt32,
    sent_time DateTime64(9, 'UTC'),
    batch_events UInt32,
    lost_kernel UInt64,
    lost_agent_buffer UInt64,
    lost_enrichment UInt64,
    lost_kernel_skipped_runs UInt64,
    lost_sockets_untracked UInt64,
    lost_by_reason Map(String, UInt64),
    unobserved_windows UInt32,
    clock_offset_ns Int64,
    clock_offset_error_ns UInt64,
    clock_offset_bounded Bool
)
ENGINE = Null;

-- One row per socket at CLOSE (TcpEvent.lifecycle): connections that were not ordinary, and all
-- of them with --connections each.
CREATE TABLE tcpscope_lifecycles
(
    agent_id String,
    batch_seq UInt64,
    batch_index UInt32,
    time DateTime64(9, 'UTC'),
    clock_correction_ns Int64,
    node LowCardinality(String),
    socket_id UInt64,
    connection_id UInt64,
    local_ip String,
    local_port UInt32,
    local_kind LowCardinality(String),
    local_namespace LowCardinality(String),
    local_name String,
    local_uid String,
    local_labels Map(String, String),
    local_container String,
    local_container_id String,
    local_workload_kind LowCardinality(String),
    local_workload_name String,
    local_node LowCardinality(String),
    -- the Service ports a server's end is an endpoint of (Endpoint.services, --resolve-backends)
    local_services Nested(namespace String, name String, port UInt32),
    remote_ip String,
    remote_port UInt32,
    remote_kind LowCardinality(String),
    remote_namespace LowCardinality(String),
    remote_name String,
    remote_uid String,
    remote_labels Map(String, String),
    remote_workload_kind LowCardinality(String),
    remote_workload_name String,
    remote_node LowCardinality(String),
    process_pid UInt32,
    process_comm String,
    process_cgroup_id UInt64,
    role LowCardinality(String),
    duration_ns UInt64,
    tx_bytes UInt64,
    rx_bytes UInt64,
    ending LowCardinality(String),
    errno Int32,
    errno_name LowCardinality(String),
    last_state LowCardinality(String),
    retransmits UInt32,
    reset_reason UInt32,
    reset_reason_name LowCardinality(String),
    tracked_mid_life Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (agent_id, batch_seq, batch_index);

-- Ordinary connections aggregated in the kernel (TcpEvent.flow), one row per key and interval.
CREATE TABLE tcpscope_flows
(
    agent_id String,
    batch_seq UInt64,
    batch_index UInt32,
    time DateTime64(9, 'UTC'),
    clock_correction_ns Int64,
    node LowCardinality(String),
    local_ip String,
    local_port UInt32,
    local_kind LowCardinality(String),
    local_namespace LowCardinality(String),
    local_name String,
    local_workload_kind LowCardinality(String),
    local_workload_name String,
    local_node LowCardinality(String),
    -- the Service ports a server's end is an endpoint of (Endpoint.services, --resolve-backends)
    local_services Nested(namespace String, name String, port UInt32),
    remote_ip String,
    remote_port UInt32,
    remote_kind LowCardinality(String),
    remote_namespace LowCardinality(String),
    remote_name String,
    remote_workload_kind LowCardinality(String),
    remote_workload_name String,
    remote_node LowCardinality(String),
    process_pid UInt32,
    process_comm String,
    process_cgroup_id UInt64,
    role LowCardinality(String),
    connections UInt64,
    tx_bytes UInt64,
    rx_bytes UInt64,
    duration_us_log2 Array(UInt64),
    duration_sum_ns UInt64,
    first_close DateTime64(9, 'UTC'),
    last_close DateTime64(9, 'UTC'),
    interval_ns UInt64,
    source LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (agent_id, batch_seq, batch_index);

-- Anomalies past the agents' budget (TcpEvent.anomalies, AnomalyAggregate), one row per key and
-- interval: `count` anomalies of one kind the kernel counted instead of sending each one (docs/kafka.md,
-- "Anomaly aggregates"). The pairs query does not count them yet (docs/analytics.md, "Where SQL and
-- the summary differ"); this table keeps every field for your own queries.
CREATE TABLE tcpscope_anomalies
(
    agent_id String,
    batch_seq UInt64,
    batch_index UInt32,
    time DateTime64(9, 'UTC'),
    clock_correction_ns Int64,
    node LowCardinality(String),
    local_ip String,
    local_port UInt32,
    local_kind LowCardinality(String),
    local_namespace LowCardinality(String),
    local_name String,
    local_workload_kind LowCardinality(String),
    local_workload_name String,
    local_node LowCardinality(String),
    remote_ip String,
    remote_port UInt32,
    remote_kind LowCardinality(String),
    remote_namespace LowCardinality(String),
    remote_name String,
    remote_workload_kind LowCardinality(String),
    remote_workload_name String,
    remote_node LowCardinality(String),
    process_pid UInt32,
    process_comm String,
    process_cgroup_id UInt64,
    anomaly_kind LowCardinality(String),  -- what each anomaly would have been: ANOMALY_LIFECYCLE, ...
    count UInt64,
    exemplars UInt64,
    first DateTime64(9, 'UTC'),
    last DateTime64(9, 'UTC'),
    interval_ns UInt64,
    role LowCardinality(String),
    state LowCardinality(String),
    ending LowCardinality(String),
    errno Int32,
    errno_name LowCardinality(String),
    reason UInt32,
    reason_name LowCardinality(String),
    established Bool,
    retransmitted Bool,
    first_of_request Bool,
    no_socket Bool,
    coarse Bool,
    tx_bytes UInt64,
    rx_bytes UInt64,
    duration_sum_ns UInt64,
    retransmits UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (agent_id, batch_seq, batch_index);

-- Every other per-socket event: resets (sent and received) and socket errors, and also
-- retransmits, SYN-ACK retransmits, state changes and probes when the agents report them. The
-- reset-cause join needs all of them: any event of the peer's socket proves its agent saw it.
CREATE TABLE tcpscope_socket_events
(
    agent_id String,
    batch_seq UInt64,
    batch_index UInt32,
    time DateTime64(9, 'UTC'),
    clock_correction_ns Int64,
    node LowCardinality(String),
    socket_id UInt64,
    connection_id UInt64,
    local_ip String,
    local_port UInt32,
    local_kind LowCardinality(String),
    local_namespace LowCardinality(String),
    local_name String,
    local_node LowCardinality(String),
    remote_ip String,
    remote_port UInt32,
    remote_kind LowCardinality(String),
    remote_namespace LowCardinality(String),
    remote_name String,
    remote_node LowCardinality(String),
    process_pid UInt32,
    process_comm String,
    kind LowCardinality(String),
    direction LowCardinality(String),
    state LowCardinality(String),
    reason UInt32,
    reason_name LowCardinality(String),
    errno Int32,
    errno_name LowCardinality(String),
    old_state LowCardinality(String),
    time_in_old_state_ns UInt64,
    srtt_us UInt32,
    snd_cwnd UInt32
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (agent_id, batch_seq, batch_index);

-- One row per agent batch (its batch-summary record): the losses since that agent's previous batch.
CREATE TABLE tcpscope_batches
(
    agent_id String,
    batch_seq UInt64,
    node LowCardinality(String),
    schema_version UInt32,
    sent_time DateTime64(9, 'UTC'),
    batch_events UInt32,
    lost_kernel UInt64,
    lost_agent_buffer UInt64,
    lost_enrichment UInt64,
    lost_kernel_skipped_runs UInt64,
    lost_sockets_untracked UInt64,
    lost_by_reason Map(String, UInt64),
    unobserved_windows UInt32,
    clock_offset_ns Int64,
    clock_offset_error_ns UInt64,
    clock_offset_bounded Bool,
    clock_correction_ns Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(sent_time)
ORDER BY (agent_id, batch_seq);

CREATE MATERIALIZED VIEW tcpscope_lifecycles_mv TO tcpscope_lifecycles AS
SELECT
    agent_id, batch_seq, batch_index, tcpscope_corrected(time, clock_correction_ns) AS time, clock_correction_ns,
    node, socket_id, connection_id,
    local_ip, local_port, local_kind, local_namespace, local_name, local_uid, local_labels,
    local_container, local_container_id, local_workload_kind, local_workload_name, local_node,
    local_services.namespace, local_services.name, local_services.port,
    remote_ip, remote_port, remote_kind, remote_namespace, remote_name, remote_uid, remote_labels,
    remote_workload_kind, remote_workload_name, remote_node,
    process_pid, process_comm, process_cgroup_id,
    lifecycle_role AS role,
    lifecycle_duration_ns AS duration_ns,
    lifecycle_tx_bytes AS tx_bytes,
    lifecycle_rx_bytes AS rx_bytes,
    lifecycle_ending AS ending,
    lifecycle_errno AS errno,
    lifecycle_errno_name AS errno_name,
    lifecycle_last_state AS last_state,
    lifecycle_retransmits AS retransmits,
    lifecycle_reset_reason AS reset_reason,
    lifecycle_reset_reason_name AS reset_reason_name,
    lifecycle_tracked_mid_life AS tracked_mid_life
FROM tcpscope_event_stream
WHERE kind = 'lifecycle';

CREATE MATERIALIZED VIEW tcpscope_flows_mv TO tcpscope_flows AS
SELECT
    agent_id, batch_seq, batch_index, tcpscope_corrected(time, clock_correction_ns) AS time, clock_correction_ns,
    node,
    local_ip, local_port, local_kind, local_namespace, local_name, local_workload_kind,
    local_workload_name, local_node,
    local_services.namespace, local_services.name, local_services.port,
    remote_ip, remote_port, remote_kind, remote_namespace, remote_name, remote_workload_kind,
    remote_workload_name, remote_node,
    process_pid, process_comm, process_cgroup_id,
    flow_role AS role,
    flow_connections AS connections,
    flow_tx_bytes AS tx_bytes,
    flow_rx_bytes AS rx_bytes,
    flow_duration_us_log2 AS duration_us_log2,
    flow_duration_sum_ns AS duration_sum_ns,
    tcpscope_corrected(flow_first_close, clock_correction_ns) AS first_close,
    tcpscope_corrected(flow_last_close, clock_correction_ns) AS last_close,
    flow_interval_ns AS interval_ns,
    flow_source AS source
FROM tcpscope_event_stream
WHERE kind = 'flow';

CREATE MATERIALIZED VIEW tcpscope_anomalies_mv TO tcpscope_anomalies AS
SELECT
    agent_id, batch_seq, batch_index, tcpscope_corrected(time, clock_correction_ns) AS time, clock_correction_ns,
    node,
    local_ip, local_port, local_kind, local_namespace, local_name, local_workload_kind,
    local_workload_name, local_node,
    remote_ip, remote_port, remote_kind, remote_namespace, remote_name, remote_workload_kind,
    remote_workload_name, remote_node,
    process_pid, process_comm, process_cgroup_id,
    anomalies_kind AS anomaly_kind,
    anomalies_count AS count,
    anomalies_exemplars AS exemplars,
    tcpscope_corrected(anomalies_first, clock_correction_ns) AS first,
    tcpscope_corrected(anomalies_last, clock_correction_ns) AS last,
    anomalies_interval_ns AS interval_ns,
    anomalies_role AS role,
    anomalies_state AS state,
    anomalies_ending AS ending,
    anomalies_errno AS errno,
    anomalies_errno_name AS errno_name,
    anomalies_reason AS reason,
    anomalies_reason_name AS reason_name,
    anomalies_established AS established,
    anomalies_retransmitted AS retransmitted,
    anomalies_first_of_request AS first_of_request,
    anomalies_no_socket AS no_socket,
    anomalies_coarse AS coarse,
    anomalies_tx_bytes AS tx_bytes,
    anomalies_rx_bytes AS rx_bytes,
    anomalies_duration_sum_ns AS duration_sum_ns,
    anomalies_retransmits AS retransmits
FROM tcpscope_event_stream
WHERE kind = 'anomalies';

CREATE MATERIALIZED VIEW tcpscope_socket_events_mv TO tcpscope_socket_events AS
SELECT
    agent_id, batch_seq, batch_index, tcpscope_corrected(time, clock_correction_ns) AS time, clock_correction_ns,
    node, socket_id, connection_id,
    local_ip, local_port, local_kind, local_namespace, local_name, local_node,
    remote_ip, remote_port, remote_kind, remote_namespace, remote_name, remote_node,
    process_pid, process_comm,
    kind,
    reset_direction AS direction,
    multiIf(kind = 'reset', reset_state, kind = 'socket_error', socket_error_state,
            kind = 'retransmit', retransmit_state, kind = 'state_change', state_change_new_state, '') AS state,
    reset_reason AS reason,
    reset_reason_name AS reason_name,
    socket_error_errno AS errno,
    socket_error_errno_name AS errno_name,
    state_change_old_state AS old_state,
    state_change_time_in_old_state_ns AS time_in_old_state_ns,
    probe_srtt_us AS srtt_us,
    probe_snd_cwnd AS snd_cwnd
FROM tcpscope_event_stream
WHERE kind NOT IN ('lifecycle', 'flow', 'anomalies', '');

CREATE MATERIALIZED VIEW tcpscope_batches_mv TO tcpscope_batches AS
SELECT
    * EXCEPT sent_time,
    tcpscope_clock_correction(clock_offset_ns, clock_offset_error_ns, clock_offset_bounded) AS clock_correction_ns,
    tcpscope_corrected(sent_time, clock_correction_ns) AS sent_time
FROM tcpscope_batch_stream;

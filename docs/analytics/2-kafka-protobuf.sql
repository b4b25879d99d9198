-- tcpscope in ClickHouse, part 2 of 3, protobuf values (the collector's default --value-format).
-- Run after 1-tables.sql. Replace the broker list, topic and consumer group names with yours.
--
-- Record values are bare protobuf messages, one per record, no length prefix: format
-- ProtobufSingle. The event and batch-summary records share the topic, so two Kafka tables read
-- it, each with its own consumer group and message type, and each view keeps its own kind by the
-- record's `tcpscope-record` header. A record of the other kind does not parse as this table's
-- message: kafka_handle_error_mode = 'stream' turns it into a row with _error set instead of
-- stopping the consumer, and the view drops it.
--
-- kafka_schema: copy proto/tcpscope/v1/events.proto into the server's format_schema_path
-- (/var/lib/clickhouse/format_schemas/ by default), with google/protobuf/timestamp.proto beside it
-- (events.proto imports it under that path; protoc's include directory has it).

CREATE TABLE tcpscope_kafka_events
(
    time_seconds Int64,
    time_nanos Int32,
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
    -- which member of the `kind` oneof the record carries (input_format_protobuf_oneof_presence)
    kind Enum8('' = 0, 'lifecycle' = 10, 'state_change' = 11, 'retransmit' = 12, 'synack_retransmit' = 13,
               'reset' = 14, 'socket_error' = 15, 'probe' = 16, 'flow' = 17,
               'anomalies' = 60),
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
    flow_first_close_seconds Int64,
    flow_first_close_nanos Int32,
    flow_last_close_seconds Int64,
    flow_last_close_nanos Int32,
    flow_interval_ns UInt64,
    flow_source String,
    anomalies_kind String,
    anomalies_count UInt64,
    anomalies_exemplars UInt64,
    anomalies_first_seconds Int64,
    anomalies_first_nanos Int32,
    anomalies_last_seconds Int64,
    anomalies_last_nanos Int32,
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
ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka-0.kafka:9092',
    kafka_topic_list = 'tcpscope-events',
    kafka_group_name = 'clickhouse-tcpscope-events',
    kafka_format = 'ProtobufSingle',
    kafka_schema = 'events.proto:TcpEvent',
    kafka_handle_error_mode = 'stream',
    input_format_protobuf_oneof_presence = 1;

CREATE TABLE tcpscope_kafka_batches
(
    schema_version UInt32,
    node String,
    agent_id String,
    sequence UInt64,
    sent_time_seconds Int64,
    sent_time_nanos Int32,
    lost_kernel UInt64,
    lost_agent_buffer UInt64,
    lost_enrichment UInt64,
    lost_by_reason Map(String, UInt64),
    lost_kernel_skipped_runs UInt64,
    lost_sockets_untracked UInt64,
    collector_clock_offset_ns Int64,
    collector_clock_offset_error_ns UInt64,
    collector_clock_offset_bounded Bool
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka-0.kafka:9092',
    kafka_topic_list = 'tcpscope-events',
    kafka_group_name = 'clickhouse-tcpscope-batches',
    kafka_format = 'ProtobufSingle',
    kafka_schema = 'events.proto:EventBatch',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW tcpscope_kafka_events_mv TO tcpscope_event_stream AS
SELECT
    _headers.value[indexOf(_headers.name, 'agent-id')] AS agent_id,
    toUInt64OrZero(_headers.value[indexOf(_headers.name, 'batch-seq')]) AS batch_seq,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'batch-index')]) AS batch_index,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'tcpscope-schema-version')]) AS schema_version,
    fromUnixTimestamp64Nano(time_seconds * 1000000000 + time_nanos, 'UTC') AS time,
    -- what readers subtract from the agent's times (1-tables.sql applies it)
    toInt64OrZero(_headers.value[indexOf(_headers.name, 'clock-offset-ns')]) AS clock_correction_ns,
    node, socket_id,
    connection_id,
    local_ip, local_port, local_kind, local_namespace, local_name, local_uid, local_labels,
    local_container, local_container_id, local_workload_kind, local_workload_name, local_node,
    local_services.namespace, local_services.name, local_services.port,
    remote_ip, remote_port, remote_kind, remote_namespace, remote_name, remote_uid, remote_labels,
    remote_workload_kind, remote_workload_name, remote_node,
    process_pid, process_comm, process_cgroup_id, process_cgroup_path,
    toString(kind) AS kind,
    lifecycle_role, lifecycle_duration_ns, lifecycle_tx_bytes, lifecycle_rx_bytes, lifecycle_ending,
    lifecycle_errno, lifecycle_errno_name, lifecycle_last_state, lifecycle_retransmits,
    lifecycle_reset_reason, lifecycle_reset_reason_name,
    lifecycle_tracked_mid_life,
    state_change_old_state, state_change_new_state, state_change_time_in_old_state_ns,
    retransmit_state,
    reset_direction, reset_state, reset_reason, reset_reason_name,
    socket_error_errno, socket_error_errno_name, socket_error_state,
    probe_snd_cwnd, probe_srtt_us, probe_snd_wnd, probe_data_len,
    flow_role, flow_connections, flow_tx_bytes, flow_rx_bytes, flow_duration_us_log2, flow_duration_sum_ns,
    fromUnixTimestamp64Nano(flow_first_close_seconds * 1000000000 + flow_first_close_nanos, 'UTC') AS flow_first_close,
    fromUnixTimestamp64Nano(flow_last_close_seconds * 1000000000 + flow_last_close_nanos, 'UTC') AS flow_last_close,
    flow_interval_ns, flow_source,
    anomalies_kind, anomalies_count, anomalies_exemplars,
    fromUnixTimestamp64Nano(anomalies_first_seconds * 1000000000 + anomalies_first_nanos, 'UTC') AS anomalies_first,
    fromUnixTimestamp64Nano(anomalies_last_seconds * 1000000000 + anomalies_last_nanos, 'UTC') AS anomalies_last,
    anomalies_interval_ns, anomalies_role, anomalies_state, anomalies_ending,
    anomalies_errno, anomalies_errno_name, anomalies_reason, anomalies_reason_name,
    anomalies_established, anomalies_retransmitted, anomalies_first_of_request,
    anomalies_no_socket, anomalies_coarse,
    anomalies_tx_bytes, anomalies_rx_bytes, anomalies_duration_sum_ns, anomalies_retransmits
FROM tcpscope_kafka_events
WHERE _error = '' AND _headers.value[indexOf(_headers.name, 'tcpscope-record')] = 'event';

CREATE MATERIALIZED VIEW tcpscope_kafka_batches_mv TO tcpscope_batch_stream AS
SELECT
    agent_id,
    sequence AS batch_seq,
    node,
    schema_version,
    fromUnixTimestamp64Nano(sent_time_seconds * 1000000000 + sent_time_nanos, 'UTC') AS sent_time,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'batch-events')]) AS batch_events,
    lost_kernel, lost_agent_buffer, lost_enrichment, lost_kernel_skipped_runs, lost_by_reason,
    lost_sockets_untracked,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'unobserved-windows')]) AS unobserved_windows,
    collector_clock_offset_ns AS clock_offset_ns,
    collector_clock_offset_error_ns AS clock_offset_error_ns,
    collector_clock_offset_bounded AS clock_offset_bounded
FROM tcpscope_kafka_batches
WHERE _error = '' AND _headers.value[indexOf(_headers.name, 'tcpscope-record')] = 'batch-summary';

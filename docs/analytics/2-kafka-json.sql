-- tcpscope in ClickHouse, part 2 of 3, JSON values (the collector runs with --value-format json).
-- Run after 1-tables.sql. Replace the broker list, topic and consumer group name with yours.
--
-- Each record value is one JSON object: the canonical protobuf JSON mapping with the proto field
-- names, enum names, 64-bit integers as strings, times as RFC 3339, and fields at their default
-- (0, '', the enum's *_UNSPECIFIED) left out. One Kafka table reads the whole value as a string
-- (JSONAsString), and two views pick the fields out, each keeping its own kind of record by the
-- `tcpscope-record` header. Absent enums are given their *_UNSPECIFIED name, as protobuf values are.

CREATE TABLE tcpscope_kafka_json
(
    json String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka-0.kafka:9092',
    kafka_topic_list = 'tcpscope-events',
    kafka_group_name = 'clickhouse-tcpscope',
    kafka_format = 'JSONAsString';

CREATE MATERIALIZED VIEW tcpscope_kafka_json_events_mv TO tcpscope_event_stream AS
SELECT
    _headers.value[indexOf(_headers.name, 'agent-id')] AS agent_id,
    toUInt64OrZero(_headers.value[indexOf(_headers.name, 'batch-seq')]) AS batch_seq,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'batch-index')]) AS batch_index,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'tcpscope-schema-version')]) AS schema_version,
    parseDateTime64BestEffortOrZero(JSONExtractString(json, 'time'), 9, 'UTC') AS time,
    -- what readers subtract from the agent's times (1-tables.sql applies it)
    toInt64OrZero(_headers.value[indexOf(_headers.name, 'clock-offset-ns')]) AS clock_correction_ns,
    JSONExtractString(json, 'node') AS node,
    JSONExtract(json, 'socket_id', 'UInt64') AS socket_id,
    JSONExtract(json, 'connection_id', 'UInt64') AS connection_id,
    JSONExtractString(json, 'local', 'ip') AS local_ip,
    JSONExtract(json, 'local', 'port', 'UInt32') AS local_port,
    if(JSONHas(json, 'local', 'kind'), JSONExtractString(json, 'local', 'kind'), 'ENDPOINT_KIND_UNSPECIFIED') AS local_kind,
    JSONExtractString(json, 'local', 'namespace') AS local_namespace,
    JSONExtractString(json, 'local', 'name') AS local_name,
    JSONExtractString(json, 'local', 'uid') AS local_uid,
    JSONExtract(json, 'local', 'labels', 'Map(String, String)') AS local_labels,
    JSONExtractString(json, 'local', 'container') AS local_container,
    JSONExtractString(json, 'local', 'container_id') AS local_container_id,
    JSONExtractString(json, 'local', 'workload', 'kind') AS local_workload_kind,
    JSONExtractString(json, 'local', 'workload', 'name') AS local_workload_name,
    JSONExtractString(json, 'local', 'node') AS local_node,
    arrayMap(x -> JSONExtractString(x, 'namespace'), JSONExtractArrayRaw(json, 'local', 'services')) AS `local_services.namespace`,
    arrayMap(x -> JSONExtractString(x, 'name'), JSONExtractArrayRaw(json, 'local', 'services')) AS `local_services.name`,
    arrayMap(x -> JSONExtract(x, 'port', 'UInt32'), JSONExtractArrayRaw(json, 'local', 'services')) AS `local_services.port`,
    JSONExtractString(json, 'remote', 'ip') AS remote_ip,
    JSONExtract(json, 'remote', 'port', 'UInt32') AS remote_port,
    if(JSONHas(json, 'remote', 'kind'), JSONExtractString(json, 'remote', 'kind'), 'ENDPOINT_KIND_UNSPECIFIED') AS remote_kind,
    JSONExtractString(json, 'remote', 'namespace') AS remote_namespace,
    JSONExtractString(json, 'remote', 'name') AS remote_name,
    JSONExtractString(json, 'remote', 'uid') AS remote_uid,
    JSONExtract(json, 'remote', 'labels', 'Map(String, String)') AS remote_labels,
    JSONExtractString(json, 'remote', 'workload', 'kind') AS remote_workload_kind,
    JSONExtractString(json, 'remote', 'workload', 'name') AS remote_workload_name,
    JSONExtractString(json, 'remote', 'node') AS remote_node,
    JSONExtract(json, 'process', 'pid', 'UInt32') AS process_pid,
    JSONExtractString(json, 'process', 'comm') AS process_comm,
    JSONExtract(json, 'process', 'cgroup_id', 'UInt64') AS process_cgroup_id,
    JSONExtractString(json, 'process', 'cgroup_path') AS process_cgroup_path,
    multiIf(JSONHas(json, 'lifecycle'), 'lifecycle', JSONHas(json, 'state_change'), 'state_change',
            JSONHas(json, 'retransmit'), 'retransmit', JSONHas(json, 'synack_retransmit'), 'synack_retransmit',
            JSONHas(json, 'reset'), 'reset', JSONHas(json, 'socket_error'), 'socket_error',
            JSONHas(json, 'probe'), 'probe', JSONHas(json, 'flow'), 'flow',
            JSONHas(json, 'anomalies'), 'anomalies', '') AS kind,
    if(JSONHas(json, 'lifecycle', 'role'), JSONExtractString(json, 'lifecycle', 'role'), 'ROLE_UNSPECIFIED') AS lifecycle_role,
    JSONExtract(json, 'lifecycle', 'duration_ns', 'UInt64') AS lifecycle_duration_ns,
    JSONExtract(json, 'lifecycle', 'tx_bytes', 'UInt64') AS lifecycle_tx_bytes,
    JSONExtract(json, 'lifecycle', 'rx_bytes', 'UInt64') AS lifecycle_rx_bytes,
    if(JSONHas(json, 'lifecycle', 'ending'), JSONExtractString(json, 'lifecycle', 'ending'), 'ENDING_UNSPECIFIED') AS lifecycle_ending,
    JSONExtract(json, 'lifecycle', 'errno', 'Int32') AS lifecycle_errno,
    JSONExtractString(json, 'lifecycle', 'errno_name') AS lifecycle_errno_name,
    if(JSONHas(json, 'lifecycle', 'last_state'), JSONExtractString(json, 'lifecycle', 'last_state'), 'TCP_STATE_UNSPECIFIED') AS lifecycle_last_state,
    JSONExtract(json, 'lifecycle', 'retransmits', 'UInt32') AS lifecycle_retransmits,
    JSONExtract(json, 'lifecycle', 'reset_reason', 'UInt32') AS lifecycle_reset_reason,
    JSONExtractString(json, 'lifecycle', 'reset_reason_name') AS lifecycle_reset_reason_name,
    JSONExtractBool(json, 'lifecycle', 'tracked_mid_life') AS lifecycle_tracked_mid_life,
    if(JSONHas(json, 'state_change', 'old_state'), JSONExtractString(json, 'state_change', 'old_state'), 'TCP_STATE_UNSPECIFIED') AS state_change_old_state,
    if(JSONHas(json, 'state_change', 'new_state'), JSONExtractString(json, 'state_change', 'new_state'), 'TCP_STATE_UNSPECIFIED') AS state_change_new_state,
    JSONExtract(json, 'state_change', 'time_in_old_state_ns', 'UInt64') AS state_change_time_in_old_state_ns,
    if(JSONHas(json, 'retransmit', 'state'), JSONExtractString(json, 'retransmit', 'state'), 'TCP_STATE_UNSPECIFIED') AS retransmit_state,
    if(JSONHas(json, 'reset', 'direction'), JSONExtractString(json, 'reset', 'direction'), 'DIRECTION_UNSPECIFIED') AS reset_direction,
    if(JSONHas(json, 'reset', 'state'), JSONExtractString(json, 'reset', 'state'), 'TCP_STATE_UNSPECIFIED') AS reset_state,
    JSONExtract(json, 'reset', 'reason', 'UInt32') AS reset_reason,
    JSONExtractString(json, 'reset', 'reason_name') AS reset_reason_name,
    JSONExtract(json, 'socket_error', 'errno', 'Int32') AS socket_error_errno,
    JSONExtractString(json, 'socket_error', 'errno_name') AS socket_error_errno_name,
    if(JSONHas(json, 'socket_error', 'state'), JSONExtractString(json, 'socket_error', 'state'), 'TCP_STATE_UNSPECIFIED') AS socket_error_state,
    JSONExtract(json, 'probe', 'snd_cwnd', 'UInt32') AS probe_snd_cwnd,
    JSONExtract(json, 'probe', 'srtt_us', 'UInt32') AS probe_srtt_us,
    JSONExtract(json, 'probe', 'snd_wnd', 'UInt32') AS probe_snd_wnd,
    JSONExtract(json, 'probe', 'data_len', 'UInt32') AS probe_data_len,
    if(JSONHas(json, 'flow', 'role'), JSONExtractString(json, 'flow', 'role'), 'ROLE_UNSPECIFIED') AS flow_role,
    JSONExtract(json, 'flow', 'connections', 'UInt64') AS flow_connections,
    JSONExtract(json, 'flow', 'tx_bytes', 'UInt64') AS flow_tx_bytes,
    JSONExtract(json, 'flow', 'rx_bytes', 'UInt64') AS flow_rx_bytes,
    JSONExtract(json, 'flow', 'duration_us_log2', 'Array(UInt64)') AS flow_duration_us_log2,
    JSONExtract(json, 'flow', 'duration_sum_ns', 'UInt64') AS flow_duration_sum_ns,
    parseDateTime64BestEffortOrZero(JSONExtractString(json, 'flow', 'first_close'), 9, 'UTC') AS flow_first_close,
    parseDateTime64BestEffortOrZero(JSONExtractString(json, 'flow', 'last_close'), 9, 'UTC') AS flow_last_close,
    JSONExtract(json, 'flow', 'interval_ns', 'UInt64') AS flow_interval_ns,
    if(JSONHas(json, 'flow', 'source'), JSONExtractString(json, 'flow', 'source'), 'FLOW_SOURCE_UNSPECIFIED') AS flow_source,
    if(JSONHas(json, 'anomalies', 'kind'), JSONExtractString(json, 'anomalies', 'kind'), 'ANOMALY_KIND_UNSPECIFIED') AS anomalies_kind,
    JSONExtract(json, 'anomalies', 'count', 'UInt64') AS anomalies_count,
    JSONExtract(json, 'anomalies', 'exemplars', 'UInt64') AS anomalies_exemplars,
    parseDateTime64BestEffortOrZero(JSONExtractString(json, 'anomalies', 'first'), 9, 'UTC') AS anomalies_first,
    parseDateTime64BestEffortOrZero(JSONExtractString(json, 'anomalies', 'last'), 9, 'UTC') AS anomalies_last,
    JSONExtract(json, 'anomalies', 'interval_ns', 'UInt64') AS anomalies_interval_ns,
    if(JSONHas(json, 'anomalies', 'role'), JSONExtractString(json, 'anomalies', 'role'), 'ROLE_UNSPECIFIED') AS anomalies_role,
    if(JSONHas(json, 'anomalies', 'state'), JSONExtractString(json, 'anomalies', 'state'), 'TCP_STATE_UNSPECIFIED') AS anomalies_state,
    if(JSONHas(json, 'anomalies', 'ending'), JSONExtractString(json, 'anomalies', 'ending'), 'ENDING_UNSPECIFIED') AS anomalies_ending,
    JSONExtract(json, 'anomalies', 'errno', 'Int32') AS anomalies_errno,
    JSONExtractString(json, 'anomalies', 'errno_name') AS anomalies_errno_name,
    JSONExtract(json, 'anomalies', 'reason', 'UInt32') AS anomalies_reason,
    JSONExtractString(json, 'anomalies', 'reason_name') AS anomalies_reason_name,
    JSONExtractBool(json, 'anomalies', 'established') AS anomalies_established,
    JSONExtractBool(json, 'anomalies', 'retransmitted') AS anomalies_retransmitted,
    JSONExtractBool(json, 'anomalies', 'first_of_request') AS anomalies_first_of_request,
    JSONExtractBool(json, 'anomalies', 'no_socket') AS anomalies_no_socket,
    JSONExtractBool(json, 'anomalies', 'coarse') AS anomalies_coarse,
    JSONExtract(json, 'anomalies', 'tx_bytes', 'UInt64') AS anomalies_tx_bytes,
    JSONExtract(json, 'anomalies', 'rx_bytes', 'UInt64') AS anomalies_rx_bytes,
    JSONExtract(json, 'anomalies', 'duration_sum_ns', 'UInt64') AS anomalies_duration_sum_ns,
    JSONExtract(json, 'anomalies', 'retransmits', 'UInt64') AS anomalies_retransmits
FROM tcpscope_kafka_json
WHERE _headers.value[indexOf(_headers.name, 'tcpscope-record')] = 'event';

CREATE MATERIALIZED VIEW tcpscope_kafka_json_batches_mv TO tcpscope_batch_stream AS
SELECT
    JSONExtractString(json, 'agent_id') AS agent_id,
    JSONExtract(json, 'sequence', 'UInt64') AS batch_seq,
    JSONExtractString(json, 'node') AS node,
    JSONExtract(json, 'schema_version', 'UInt32') AS schema_version,
    parseDateTime64BestEffortOrZero(JSONExtractString(json, 'sent_time'), 9, 'UTC') AS sent_time,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'batch-events')]) AS batch_events,
    JSONExtract(json, 'lost', 'kernel', 'UInt64') AS lost_kernel,
    JSONExtract(json, 'lost', 'agent_buffer', 'UInt64') AS lost_agent_buffer,
    JSONExtract(json, 'lost', 'enrichment', 'UInt64') AS lost_enrichment,
    JSONExtract(json, 'lost', 'kernel_skipped_runs', 'UInt64') AS lost_kernel_skipped_runs,
    JSONExtract(json, 'lost', 'sockets_untracked', 'UInt64') AS lost_sockets_untracked,
    JSONExtract(json, 'lost', 'by_reason', 'Map(String, UInt64)') AS lost_by_reason,
    toUInt32OrZero(_headers.value[indexOf(_headers.name, 'unobserved-windows')]) AS unobserved_windows,
    JSONExtract(json, 'collector', 'clock_offset_ns', 'Int64') AS clock_offset_ns,
    JSONExtract(json, 'collector', 'clock_offset_error_ns', 'UInt64') AS clock_offset_error_ns,
    JSONExtractBool(json, 'collector', 'clock_offset_bounded') AS clock_offset_bounded
FROM tcpscope_kafka_json
WHERE _headers.value[indexOf(_headers.name, 'tcpscope-record')] = 'batch-summary';

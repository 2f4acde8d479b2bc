"""The log-source partitions: one partition per registered log source."""

import dagster as dg

LOG_SOURCE = "log_source"

log_source_partitions = dg.DynamicPartitionsDefinition(name=LOG_SOURCE)

"""The load generator: workloads, arrival processes, an async streaming client and per-request samples."""

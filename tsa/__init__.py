"""Traffic-shaping automation (TSA) service: reads log records, applies shaping.toml
automation rules and keeps its state in Redis. Built in issue 4; nothing here yet."""

"""HTTP ingestion: Segment-compatible endpoints, write keys, group commit."""

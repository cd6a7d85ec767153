//! Event ingest IO.

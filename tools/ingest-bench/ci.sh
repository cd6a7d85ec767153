#!/usr/bin/env bash
# Short run for CI: proves the tool works; the figures of a quick run are not reported.
set -euo pipefail
cargo run --release -p ingest-bench -- --quick
cargo run --release -p ingest-bench -- --quick --method journal
cargo run --release -p ingest-bench -- --quick --method table
cargo run --release -p ingest-bench -- --quick --method full-queue --only udp --udp-replies false

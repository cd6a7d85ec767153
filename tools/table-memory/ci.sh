#!/usr/bin/env bash
# Exits non-zero if bytes per call or per contact exceed the targets.
set -euo pipefail
cargo run --release -p table-memory

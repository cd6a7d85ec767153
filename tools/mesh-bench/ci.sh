#!/usr/bin/env bash
# Short run for CI: 3 nodes over real QUIC on loopback, 10 timed changes, 2-second traffic
# phases. Fails if a change never became visible or a node expired; the figures of a quick
# run are not reported.
set -euo pipefail
cargo run --release -p mesh-bench -- --quick --aor-rates 100 --aor-set 1000

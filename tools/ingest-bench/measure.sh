#!/bin/sh
# Every ingest figure of docs/performance.md in one run (~12 minutes on the 2-vCPU VM):
# live and full-queue ratios against the bare drain loop, in-process cost, table ns/event
# at 65 536 / 1 M / 10 M open calls (plain and batched with prefetch, snapshot cost),
# 1 vs 2 SO_REUSEPORT threads, what asking recvmmsg for more costs, memory per entry and
# the admit round trip. Run it on an otherwise idle machine, as root (private network
# namespace, SO_RCVBUFFORCE); every command is echoed before its output.
#
#   tools/ingest-bench/measure.sh [RUNS]        # RUNS per comparison, default 5
#
# BASELINE=/path/to/an/older/ingest-bench also runs that binary's table and live methods
# for a before/after comparison; PROFILE=1 adds a perf profile of the agent's live phase.
set -eu
runs="${1:-5}"
cd "$(dirname "$0")/../.."
cargo build --release -q -p ingest-bench -p table-memory -p admit-bench
target="${CARGO_TARGET_DIR:-target}/release"
run() {
    echo
    echo "\$ $*"
    "$@"
}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD)"
run "$target/ingest-bench" --method live --runs "$runs" --seconds 2
run "$target/ingest-bench" --method live --runs "$runs" --seconds 2 --only single-event --block
run "$target/ingest-bench" --method full-queue --runs "$runs"
run "$target/ingest-bench" --method in-process
run "$target/ingest-bench" --method table --table-sizes 65536,1000000,10000000
run "$target/ingest-bench" --method threads --runs "$runs" --threads 1,2
run "$target/ingest-bench" --method recv-cost --runs "$runs"
run "$target/ingest-bench" --method journal --runs "$((runs * 2 + 1))"
run "$target/table-memory"
run "$target/admit-bench" --count 100000 --mode both
# Where the agent's receiving thread spends the live phase (perf, software clock: works in
# a VM): the drain phase runs first for 4 s, the agent phase is sampled.
if [ -n "${PROFILE:-}" ] && command -v perf >/dev/null; then
    for case in "udp single-event text" "udp batched binary 1400"; do
        echo
        echo "\$ perf record -e cpu-clock -t <receiver> during the agent's live phase: $case"
        "$target/ingest-bench" --method live --only "$case" --runs 1 --seconds 4 >/dev/null &
        pid=$!
        sleep 5.2
        perf record -q -e cpu-clock -t "$pid" -o /tmp/ingest-bench.perf -- sleep 2.5 >/dev/null 2>&1 || true
        wait "$pid"
        perf report -i /tmp/ingest-bench.perf --stdio --no-children --sort sym 2>/dev/null \
            | grep -E '^ +[0-9]' | head -25
    done
fi
if [ -n "${BASELINE:-}" ]; then
    run "$BASELINE" --method table --table-sizes 65536,1000000,10000000
    run "$BASELINE" --method live --runs "$runs" --seconds 2 --only "single-event"
fi
echo
echo "# done $(date -u '+%H:%M UTC')"

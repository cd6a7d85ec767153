//! state-bench: the agent's checkpoint and restart at millions of calls (README.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tollgate_agent::recovery;
use tollgate_agent::resets::StateResets;
use tollgate_agent::state::StateDir;
use tollgate_events::{CallRef, Event};
use tollgate_ingest::{AdmitAll, Journal, Pipeline, tables_clock};
use tollgate_usage::journal::RecordBuilder;
use tollgate_usage::{FingerprintKey, SequenceTracker, Tables, TablesConfig};

#[derive(Debug, Parser)]
#[command(about = "Checkpoint and restart of the agent's state at millions of calls")]
struct Args {
    /// Active calls, comma-separated.
    #[arg(long, default_value = "1000000,10000000")]
    calls: String,
    /// Events in the journal replayed at restart (starts and stops of other calls, in
    /// batches of 64 per record, as ingest appends them).
    #[arg(long, default_value_t = 1_000_000)]
    journal_events: usize,
    /// Small (CI): proves the tool works; not for reporting.
    #[arg(long)]
    quick: bool,
}

const BATCH: usize = 64;

/// A field of `/proc/self/status`, in KiB.
/// The journal's MAC key here (the agent derives its own from the node key).
const JOURNAL_KEY: [u8; 32] = [9; 32];

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Restores into fresh tables with `restore`: its time and its peak memory beyond what the
/// restored tables take (MB).
fn measure_restore(
    calls: usize,
    key: &FingerprintKey,
    restore: impl FnOnce(&Tables) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_kib("VmRSS:");
    let tables = Tables::new(config(calls, 2), key.clone());
    let t = Instant::now();
    restore(&tables)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let tables_kib = status_kib("VmRSS:").saturating_sub(rss_before);
    let extra_mb = status_kib("VmHWM:").saturating_sub(rss_before + tables_kib) as f64 / 1024.0;
    anyhow::ensure!(tables.usage().calls == calls as u64, "restore lost calls");
    Ok((ms, extra_mb))
}

/// `map_seed` differs between the tables that write a snapshot and those that restore it,
/// as in the agent (a fresh seed at every start).
fn config(calls: usize, map_seed: u64) -> TablesConfig {
    TablesConfig {
        max_active_calls: (calls as u64 * 2).max(1 << 20),
        map_seed,
        ..TablesConfig::default()
    }
}

fn call_id(i: usize) -> String {
    format!("{i:016x}-state-bench@10.0.0.1")
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.calls = "20000".to_owned();
        args.journal_events = 10_000;
    }
    println!(
        "{:>10} {:>11} {:>12} {:>15} {:>11} {:>15} {:>16} {:>16} {:>13}",
        "calls",
        "fill s",
        "checkpoint ms",
        "snapshot MB",
        "extra MB",
        "restore ms",
        "restore extra MB",
        "whole-file MB",
        "restart ms"
    );
    for calls in args.calls.split(',').map(|s| s.trim().parse::<usize>()) {
        let calls = calls.context("--calls: numbers")?;
        run(calls, args.journal_events)?;
    }
    Ok(())
}

fn run(calls: usize, journal_events: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state");
    let state_dir = StateDir::open(&path)?;
    state_dir.set_journal_key(JOURNAL_KEY);
    let key = state_dir.fingerprint_key()?;
    let tables = Tables::new(config(calls, 1), key.clone());
    let now = tables_clock();
    let t = Instant::now();
    for i in 0..calls {
        let id = call_id(i);
        let call = CallRef {
            call_id: id.as_bytes(),
            from_tag: Some(b"t"),
        };
        tables.apply(
            now,
            &Event::CallStart {
                call,
                emergency: false,
            },
        );
    }
    let fill_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(tables.usage().calls == calls as u64, "the fill lost calls");

    // Checkpoint: the streamed snapshot, durably written; extra peak memory while writing.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_kib("VmRSS:");
    let t = Instant::now();
    let bytes = recovery::checkpoint(&tables, &state_dir, None, 1)?;
    let checkpoint_ms = t.elapsed().as_secs_f64() * 1e3;
    let extra_mb = status_kib("VmHWM:").saturating_sub(rss_before) as f64 / 1024.0;

    // A journal after it: segment 1, records of 64 events (stops of snapshot calls and
    // starts of new ones), as ingest appends them.
    let journal = Journal::open(
        &path.join(recovery::JOURNAL_DIR),
        1,
        tables.fingerprint_key_id(),
        tollgate_ingest::clock_offset_ms(),
        Duration::from_secs(1),
        u64::MAX,
        JOURNAL_KEY,
    )?;
    let mut record = RecordBuilder::default();
    let mut datagram = String::new();
    let mut stopped = 0usize;
    for batch in 0..journal_events.div_ceil(BATCH) {
        record.begin(now);
        for k in 0..BATCH {
            datagram.clear();
            let i = batch * BATCH + k;
            if i.is_multiple_of(2) && stopped < calls {
                datagram.push_str(&format!("call-stop {} tag=t\n", call_id(stopped)));
                stopped += 1;
            } else {
                datagram.push_str(&format!("call-start {} tag=t\n", call_id(calls + i)));
            }
            record.push(datagram.as_bytes());
        }
        anyhow::ensure!(
            journal.lock().append(record.finish()),
            "journal append failed"
        );
    }
    journal.sync();
    drop(journal);
    drop(tables);
    drop(state_dir);

    // Restore alone: the snapshot file read and restored.
    // Restore alone, twice: streamed from the file as the agent does, and (for comparison)
    // from the whole file read into memory first, as the agent did before. Each with its
    // peak memory beyond the restored tables themselves.
    let (restore_ms, restore_extra_mb) = measure_restore(calls, &key, |t| {
        let file = std::fs::File::open(path.join("usage.snapshot"))?;
        t.restore_reader(std::io::BufReader::with_capacity(1 << 20, file))?;
        Ok(())
    })?;
    let (_, whole_extra_mb) = measure_restore(calls, &key, |t| {
        let file = std::fs::read(path.join("usage.snapshot"))?;
        t.restore_bytes(&file)?;
        Ok(())
    })?;

    // Restart: what the agent runs at start (snapshot + journal replay + sweep).
    let state_dir = StateDir::open(&path)?;
    // Replay checks each record's MAC, as the agent's does.
    state_dir.set_journal_key(JOURNAL_KEY);
    let key_for_seq = key.clone();
    let tables = Arc::new(Tables::new(config(calls, 3), key));
    let resets = StateResets::open(&path);
    let replay = Pipeline {
        tables: Arc::clone(&tables),
        sequences: Arc::new(SequenceTracker::with_key(&key_for_seq)),
        admission: Arc::new(AdmitAll),
        observer: None,
        journal: None,
    };
    let t = Instant::now();
    let recovered = recovery::recover(&state_dir, &tables, &replay, &resets);
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    let expected = calls + (journal_events.div_ceil(BATCH) * BATCH - 2 * stopped.min(calls));
    anyhow::ensure!(
        tables.usage().calls == expected as u64,
        "restart counted {} calls, not {expected}",
        tables.usage().calls
    );
    anyhow::ensure!(resets.pending().is_empty(), "the restart reported a reset");
    println!(
        "{:>10} {:>11.1} {:>12.0} {:>15.1} {:>11.1} {:>15.0} {:>16.1} {:>16.1} {:>13.0}   ({} journal records replayed)",
        calls,
        fill_s,
        checkpoint_ms,
        bytes as f64 / 1e6,
        extra_mb,
        restore_ms,
        restore_extra_mb,
        whole_extra_mb,
        restart_ms,
        recovered.records
    );
    Ok(())
}

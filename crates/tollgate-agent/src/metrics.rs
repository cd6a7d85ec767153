//! The agent's `/metrics`: every family it exports, walked into the one writer of
//! Prometheus text ([`MetricsWriter`], from `tollgate-prometheus`, which the license server
//! uses too). Names follow `tollgate_<name>_<unit>[_total]`; dropped things carry a
//! low-cardinality `reason` label.
//!
//! **Boundary:** this is the only place the agent decides what its metrics are. The crates
//! expose plain counters (`tollgate_ingest::StatsSnapshot`, `HepSnapshot`, the replica's
//! `Stats`, …) with their label names beside them; the agent's own modules (reconcile,
//! state resets) hand their numbers to a [`MetricsWriter`] too.

use std::sync::atomic::Ordering::Relaxed;

use tollgate_events::{Malformed, Verb};
use tollgate_ingest::stats::{
    BATCH_BUCKETS, DatagramDrop, EventOutcome, EventRefusal, OPENSIPS_RESULTS,
};
use tollgate_ingest::{HepResult, HepSnapshot};

use crate::AgentState;

pub use tollgate_prometheus::MetricsWriter;

/// Renders every metric of the agent.
pub fn render(state: &AgentState) -> String {
    let mut m = MetricsWriter::default();
    let usage = state.tables.usage();
    let peaks = state.tables.peaks().since_start();
    let ingest = state.ingest_stats.snapshot();
    let t = &ingest.totals;

    m.header("tollgate_build_info", "gauge", "Build information.");
    m.sample(
        "tollgate_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("node_id", &state.node_id),
        ],
        1,
    );
    m.gauge(
        "tollgate_uptime_seconds",
        "Seconds since the agent started.",
        state.started.elapsed().as_secs(),
    );
    m.gauge(
        "tollgate_calls",
        "Active calls on this node (emergency calls included).",
        usage.calls,
    );
    m.gauge(
        "tollgate_emergency_calls",
        "Active emergency calls on this node.",
        usage.emergency_calls,
    );
    m.gauge(
        "tollgate_registered_subscribers",
        "AoRs with at least one live contact on this node.",
        usage.registered_subscribers,
    );
    m.gauge(
        "tollgate_registered_contacts",
        "Live registration contacts on this node.",
        usage.registered_contacts,
    );
    m.gauge(
        "tollgate_subscribers",
        "Provisioned subscribers, as last reported.",
        usage.subscribers,
    );
    m.gauge(
        "tollgate_peak_calls",
        "Highest concurrent calls since the agent started.",
        peaks.calls,
    );
    m.gauge(
        "tollgate_peak_registered_subscribers",
        "Highest registered subscribers since the agent started.",
        peaks.registered_subscribers,
    );

    m.counter(
        "tollgate_ingest_datagrams_total",
        "Datagrams received on the event sockets.",
        t.datagrams,
    );
    m.counter(
        "tollgate_ingest_bytes_total",
        "Bytes received on the event sockets.",
        t.bytes,
    );
    m.labeled_counter(
        "tollgate_events_total",
        "Well-formed events received, by verb.",
        "verb",
        Verb::ALL
            .iter()
            .map(|v| (v.as_str(), t.events[*v as usize])),
    );
    m.labeled_counter(
        "tollgate_events_malformed_total",
        "Malformed lines or records dropped, by reason.",
        "reason",
        Malformed::ALL
            .iter()
            .map(|r| (r.as_str(), t.malformed[*r as usize])),
    );
    m.labeled_counter(
        "tollgate_event_outcomes_total",
        "What applied events did (idempotency at work: call_already_active, call_unknown, ...).",
        "outcome",
        EventOutcome::ALL
            .iter()
            .map(|o| (o.as_str(), t.outcomes[*o as usize])),
    );
    m.labeled_counter(
        "tollgate_datagrams_dropped_total",
        "Whole datagrams dropped, by reason.",
        "reason",
        DatagramDrop::ALL
            .iter()
            .map(|d| (d.as_str(), t.dropped[*d as usize])),
    );
    m.counter(
        "tollgate_datagrams_lost_total",
        "Datagrams never received, from gaps in per-sender sequence numbers.",
        t.lost_datagrams,
    );
    m.counter(
        "tollgate_sender_restarts_total",
        "Senders whose sequence started over.",
        t.sender_restarts,
    );
    m.counter(
        "tollgate_kernel_drops_total",
        "Datagrams the kernel dropped because a socket's receive queue was full (SO_MEMINFO).",
        ingest.kernel_drops,
    );
    m.histogram(
        "tollgate_ingest_batch_datagrams",
        "Datagrams per recvmmsg batch.",
        &BATCH_BUCKETS,
        &t.batch_buckets,
        t.datagrams,
    );
    m.counter(
        "tollgate_admit_replies_total",
        "Reply datagrams sent to admit queries.",
        t.replies,
    );
    m.labeled_counter(
        "tollgate_admit_reply_failures_total",
        "Admit replies (or answers in them) that could not be sent, by reason: reply_full is one answer left out of a reply datagram already at 8192 bytes.",
        "reason",
        [
            ("send_error", t.reply_errors),
            ("no_return_address", t.replies_unaddressable),
            ("reply_full", t.reply_answers_dropped),
        ],
    );
    m.counter(
        "tollgate_ingest_receive_errors_total",
        "Failed receive calls.",
        t.recv_errors,
    );

    m.labeled_counter(
        "tollgate_opensips_notifications_total",
        "OpenSIPS event_datagram notifications on the event sockets, by result (applied, ignored, or why dropped).",
        "result",
        OPENSIPS_RESULTS.iter().copied().zip(t.opensips),
    );
    // The tables are shared by the event sockets and the HEP collector: one family for both.
    let mut refused = tollgate_ingest::LocalStats {
        refused: t.refused,
        ..Default::default()
    };
    if let Some(hep) = &state.hep {
        for (sum, hep) in refused
            .refused
            .iter_mut()
            .zip(hep.snapshot().ingest.totals.refused)
        {
            *sum = sum.saturating_add(hep);
        }
    }
    m.labeled_counter(
        "tollgate_events_refused_total",
        "Well-formed events refused because a table is at its configured cap ([calls] max_active_calls, [registrations] max_aors), by reason. A refused event changes nothing.",
        "reason",
        EventRefusal::ALL
            .iter()
            .map(|r| (r.as_str(), refused.refused[*r as usize])),
    );
    state.reconciler.write_metrics(&mut m);
    if let Some(hep) = &state.hep {
        render_hep(&mut m, &hep.snapshot());
    }
    render_license(&mut m, state);
    // Every code that can deny, zeros included, so `rate()` and alerts see the series from
    // the start.
    let totals = state.denials.totals();
    m.labeled_counter(
        "tollgate_admissions_denied_total",
        "New calls denied admission (`admit` on the event sockets and GET /api/v1/admit), by deny code.",
        "code",
        tollgate_license::StatusCode::ALL
            .into_iter()
            .filter(|c| c.can_deny())
            .map(|c| (c.as_str(), totals[c as usize])),
    );
    if let Some(cluster) = &state.cluster {
        render_mesh(&mut m, state, cluster);
    }

    render_admin(&mut m, state);

    let snap = state.snapshots.lock().clone();
    m.counter(
        "tollgate_snapshots_total",
        "Snapshots written.",
        snap.written,
    );
    m.counter(
        "tollgate_snapshot_failures_total",
        "Snapshots that failed to write.",
        snap.failed,
    );
    m.gauge(
        "tollgate_snapshot_last_success_timestamp_seconds",
        "Unix time of the last snapshot written (0: none yet).",
        snap.last_success_unix_s,
    );
    m.gauge(
        "tollgate_snapshot_bytes",
        "Size of the last snapshot written.",
        snap.last_bytes,
    );
    let tls = &state.admin_tls;
    m.labeled_counter(
        "tollgate_admin_tls_handshakes_total",
        "TLS handshakes on the admin API by result (all 0 without [admin] tls_cert).",
        "result",
        [
            ("ok", tls.ok.load(Relaxed)),
            ("failed", tls.failed.load(Relaxed)),
            ("timeout", tls.timed_out.load(Relaxed)),
        ],
    );
    state.resets.write_metrics(&mut m);
    if let Some(j) = &state.journal {
        let s = &j.stats;
        m.counter(
            "tollgate_journal_records_total",
            "Batches appended to the journal.",
            s.records.load(Relaxed),
        );
        m.counter(
            "tollgate_journal_bytes_total",
            "Bytes appended to the journal.",
            s.bytes.load(Relaxed),
        );
        m.counter(
            "tollgate_journal_write_failures_total",
            "Batches applied but not journalled (a full disk): not crash-safe until the next snapshot.",
            s.write_failures.load(Relaxed),
        );
        m.counter(
            "tollgate_journal_unjournaled_batches_total",
            "Batches applied while the journal was suspended (full or failing): lost by a crash before the next snapshot.",
            s.unjournaled.load(Relaxed),
        );
        m.counter(
            "tollgate_journal_suspensions_total",
            "Times the journal was suspended (over [state] journal_max_bytes, or a failed write).",
            s.suspensions.load(Relaxed),
        );
        m.gauge(
            "tollgate_journal_suspended",
            "1 while the journal is suspended: applied batches are not crash-safe until a snapshot is written.",
            s.suspended.load(Relaxed),
        );
        m.gauge(
            "tollgate_journal_retained_bytes",
            "Bytes of the journal segments on disk (not yet covered by a snapshot).",
            s.retained_bytes.load(Relaxed),
        );
        m.gauge(
            "tollgate_journal_max_bytes",
            "[state] journal_max_bytes: the bound on tollgate_journal_retained_bytes.",
            j.max_bytes(),
        );
        m.counter(
            "tollgate_journal_fsyncs_total",
            "fsyncs of the journal.",
            s.fsyncs.load(Relaxed),
        );
        m.counter(
            "tollgate_journal_fsync_failures_total",
            "fsyncs of the journal that failed.",
            s.fsync_failures.load(Relaxed),
        );
    }
    m.gauge(
        "tollgate_journal_enabled",
        "1 when applied batches are journalled (crash-exact), 0 when the journal could not be opened.",
        u64::from(state.journal.is_some()),
    );
    m.gauge(
        "tollgate_journal_replayed_records",
        "Journal records replayed at start.",
        state.recovery.records,
    );
    let ledger = state.ledger.stats();
    m.counter(
        "tollgate_ledger_entries_total",
        "Usage ledger entries appended since start.",
        ledger.entries_written,
    );
    m.counter(
        "tollgate_ledger_write_failures_total",
        "Usage ledger entries that failed to write.",
        ledger.write_failures,
    );
    m.finish()
}

fn render_admin(m: &mut MetricsWriter, state: &AgentState) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &state.admin_counters;
    m.gauge(
        "tollgate_admin_connections",
        "Admin HTTP connections open now (at most [admin] max_connections).",
        c.open.load(Relaxed),
    );
    m.counter(
        "tollgate_admin_connections_total",
        "Admin HTTP connections accepted.",
        c.accepted.load(Relaxed),
    );
    m.labeled_counter(
        "tollgate_admin_connections_closed_total",
        "Admin HTTP connections closed by the agent's limits, by reason.",
        "reason",
        [
            ("evicted", c.evicted.load(Relaxed)),
            ("refused", c.refused.load(Relaxed)),
            ("header_timeout", c.header_timeouts.load(Relaxed)),
            ("idle_timeout", c.idle_timeouts.load(Relaxed)),
        ],
    );
    m.labeled_counter(
        "tollgate_admin_login_failures_total",
        "Admin requests with bad credentials (failed), and requests answered 429 because their address failed too often (throttled).",
        "result",
        [
            ("failed", c.logins_failed.load(Relaxed)),
            ("throttled", c.logins_throttled.load(Relaxed)),
        ],
    );
    m.counter(
        "tollgate_admin_password_verifications_total",
        "Argon2 password verifications run (an unknown user costs one, like a wrong password).",
        state.users.verifications_total(),
    );
}

fn render_license(m: &mut MetricsWriter, state: &AgentState) {
    let Some(e) = state.license.last_evaluation() else {
        return;
    };
    m.header(
        "tollgate_license_status",
        "gauge",
        "1 for the license status in force (stable codes), 0 for the others.",
    );
    for code in tollgate_license::StatusCode::ALL {
        m.sample(
            "tollgate_license_status",
            &[("code", code.as_str())],
            u8::from(code == e.status),
        );
    }
    m.gauge(
        "tollgate_license_status_code",
        "The license status as a number: 0 OK, 1 WARNING, 2 OVER_LIMIT, 3 LEASE_EXPIRED, 4 EXPIRED, 5 NOT_YET_VALID, 6 HOST_MISMATCH, 7 ROLLBACK, 8 INVALID, 9 NO_LICENSE.",
        e.status as u8,
    );
    m.gauge(
        "tollgate_license_enforcing",
        "1 when the license denies new calls beyond its limit (enforce mode), 0 when it only warns.",
        u8::from(e.mode == tollgate_license::Mode::Enforce),
    );
    if let Some(current) = state.license.current() {
        m.gauge(
            "tollgate_license_serial",
            "Serial of the license in force.",
            current.document().serial,
        );
    }
    m.header(
        "tollgate_license_usage",
        "gauge",
        "Usage counted against each license limit.",
    );
    for (name, _, l) in e.limits.iter() {
        m.sample("tollgate_license_usage", &[("limit", name)], l.usage);
    }
    m.header(
        "tollgate_license_limit",
        "gauge",
        "Each license limit (absent: unlimited).",
    );
    for (name, _, l) in e.limits.iter() {
        if let Some(limit) = l.limit {
            m.sample("tollgate_license_limit", &[("limit", name)], limit);
        }
    }
    m.header(
        "tollgate_license_headroom",
        "gauge",
        "Limit minus usage for each limited figure (negative: over).",
    );
    for (name, _, l) in e.limits.iter() {
        if let Some(h) = l.headroom {
            m.sample("tollgate_license_headroom", &[("limit", name)], h);
        }
    }
    if let Some(ms) = e.ms_to_expiry {
        m.gauge(
            "tollgate_license_seconds_to_expiry",
            "Seconds until the license's valid_until (negative: past).",
            ms / 1000,
        );
    }
    if let Some(ms) = e.ms_to_lease_end {
        m.gauge(
            "tollgate_license_seconds_to_lease_end",
            "Seconds until the signature lease ends (negative: past); renewal extends it.",
            ms / 1000,
        );
    }
    if let Some(fetcher) = &state.fetcher {
        let f = fetcher.stats();
        m.labeled_counter(
            "tollgate_license_fetches_total",
            "Fetches from the license server, by result (ok, or the failure's cause).",
            "result",
            f.results.iter().map(|(k, v)| (*k, *v)),
        );
        m.gauge(
            "tollgate_license_fetch_last_success_timestamp_seconds",
            "Unix time of the last successful fetch (0: none yet).",
            f.last_success_ms.unwrap_or(0) / 1000,
        );
        m.gauge(
            "tollgate_license_fetch_last_failure_timestamp_seconds",
            "Unix time of the last failed fetch (0: none).",
            f.last_failure_ms.unwrap_or(0) / 1000,
        );
        m.counter(
            "tollgate_usage_reports_sent_total",
            "Usage reports delivered to the license server.",
            f.reports_sent,
        );
        m.counter(
            "tollgate_usage_reports_failed_total",
            "Usage reports the license server did not take.",
            f.reports_failed,
        );
    }
    let t = state.ingest_stats.snapshot().totals;
    m.counter(
        "tollgate_admit_denied_total",
        "admit queries answered with deny.",
        t.outcomes[EventOutcome::AdmitDenied as usize],
    );
}

/// The cluster: the aggregate the license holds against, node states, this node's links to
/// its peers, and the transport's and the replica's counters.
fn render_mesh(m: &mut MetricsWriter, state: &AgentState, cluster: &crate::cluster::Cluster) {
    let usage = cluster.view.with_local(&state.tables.usage());
    m.gauge(
        "tollgate_cluster_calls",
        "Active calls over the counted nodes of the cluster (this one included).",
        usage.calls,
    );
    m.gauge(
        "tollgate_cluster_emergency_calls",
        "Active emergency calls over the counted nodes of the cluster.",
        usage.emergency_calls,
    );
    m.gauge(
        "tollgate_cluster_registered_subscribers",
        "Distinct AoRs with a live contact on any counted node of the cluster (each counted once).",
        usage.registered_subscribers,
    );
    m.gauge(
        "tollgate_cluster_subscribers",
        "Provisioned subscribers on the platform (the latest report of any node).",
        usage.subscribers,
    );
    let agg = cluster.mesh.aggregate();
    m.labeled_gauge(
        "tollgate_cluster_nodes",
        "Nodes of the cluster view by state (held: expired, still counted by the expired rule).",
        "state",
        [
            ("live", agg.nodes_live),
            ("suspect", agg.nodes_suspect),
            ("held", agg.nodes_held),
            ("expired", agg.nodes_expired),
            ("left", agg.nodes_left),
        ],
    );
    m.gauge(
        "tollgate_cluster_license_serial_max",
        "The highest license serial any node advertises.",
        agg.license_serial_max,
    );
    m.gauge(
        "tollgate_mesh_incarnation",
        "This node's incarnation (grows at every restart).",
        cluster.mesh.incarnation(),
    );

    let nodes = cluster.mesh.nodes();
    let remote = || nodes.iter().filter(|n| !n.view.local);
    m.labeled_gauge(
        "tollgate_cluster_node_calls",
        "Active calls each other node last reported.",
        "node",
        remote().map(|n| (n.view.node_id.as_str(), n.view.usage.calls)),
    );
    m.labeled_gauge(
        "tollgate_cluster_node_age_seconds",
        "Since each other node's record last advanced (directly or relayed).",
        "node",
        remote().map(|n| (n.view.node_id.as_str(), n.view.age_ms as f64 / 1000.0)),
    );
    m.labeled_gauge(
        "tollgate_cluster_node_counted",
        "1 when the node's usage counts in the cluster sums, 0 when not.",
        "node",
        remote().map(|n| (n.view.node_id.as_str(), u8::from(n.view.counted))),
    );
    let linked = || remote().filter_map(|n| n.link.as_ref().map(|l| (n.view.node_id.as_str(), l)));
    m.labeled_gauge(
        "tollgate_mesh_peer_rtt_seconds",
        "Smoothed round-trip time to each connected peer, as QUIC estimates it.",
        "peer",
        linked().map(|(id, l)| (id, l.rtt.as_secs_f64())),
    );
    m.labeled_gauge(
        "tollgate_mesh_peer_last_heard_seconds",
        "Since the last frame from each connected peer.",
        "peer",
        linked().map(|(id, l)| (id, l.last_heard_ms as f64 / 1000.0)),
    );
    m.labeled_counter(
        "tollgate_mesh_peer_sent_bytes_total",
        "UDP payload bytes sent on the connection to each peer (QUIC overhead included).",
        "peer",
        linked().map(|(id, l)| (id, l.bytes_sent)),
    );
    m.labeled_counter(
        "tollgate_mesh_peer_received_bytes_total",
        "UDP payload bytes received on the connection from each peer.",
        "peer",
        linked().map(|(id, l)| (id, l.bytes_received)),
    );

    let stats = cluster.mesh.stats();
    m.gauge(
        "tollgate_mesh_peers_connected",
        "Peers with an authenticated connection now.",
        stats.peers_connected,
    );
    m.labeled_counter(
        "tollgate_mesh_frames_sent_total",
        "Replication frames sent, by frame (a frame to every peer counts once per peer).",
        "frame",
        stats.frames_sent.iter().map(|(k, c)| (*k, c.frames)),
    );
    m.labeled_counter(
        "tollgate_mesh_frame_sent_bytes_total",
        "Encoded bytes of the replication frames sent, by frame.",
        "frame",
        stats.frames_sent.iter().map(|(k, c)| (*k, c.bytes)),
    );
    m.labeled_counter(
        "tollgate_mesh_frames_received_total",
        "Replication frames received and decoded, by frame.",
        "frame",
        stats.frames_received.iter().map(|(k, c)| (*k, c.frames)),
    );
    m.labeled_counter(
        "tollgate_mesh_frame_received_bytes_total",
        "Encoded bytes of the replication frames received, by frame.",
        "frame",
        stats.frames_received.iter().map(|(k, c)| (*k, c.bytes)),
    );
    m.labeled_counter(
        "tollgate_mesh_errors_total",
        "Mesh refusals and failures, by reason (decode errors, refused frames, TLS, dials, sends).",
        "reason",
        stats.errors.iter().map(|(k, v)| (*k, *v)),
    );
    m.labeled_counter(
        "tollgate_mesh_connection_closes_total",
        "Mesh connections that ended, by reason.",
        "reason",
        stats.closes.iter().map(|(k, v)| (*k, *v)),
    );
    m.labeled_counter(
        "tollgate_mesh_connections_total",
        "Authenticated mesh connections, by who opened them.",
        "direction",
        [
            ("accepted", stats.connections_accepted),
            ("dialed", stats.connections_dialed),
        ],
    );
    m.counter(
        "tollgate_mesh_connections_replaced_total",
        "Connections replaced by a newer one to the same peer.",
        stats.connections_replaced,
    );
    m.counter(
        "tollgate_mesh_dials_total",
        "Dials started (reconnects included).",
        stats.dials_started,
    );
    m.labeled_counter(
        "tollgate_mesh_udp_bytes_total",
        "UDP payload bytes of the mesh's connections (QUIC headers, ACKs and handshakes included).",
        "direction",
        [("tx", stats.udp.tx_bytes), ("rx", stats.udp.rx_bytes)],
    );
    m.labeled_counter(
        "tollgate_mesh_udp_datagrams_total",
        "UDP datagrams of the mesh's connections.",
        "direction",
        [
            ("tx", stats.udp.tx_datagrams),
            ("rx", stats.udp.rx_datagrams),
        ],
    );
    m.counter(
        "tollgate_mesh_lost_packets_total",
        "QUIC packets declared lost on the mesh's connections.",
        stats.udp.lost_packets,
    );
    let r = stats.replica;
    m.labeled_counter(
        "tollgate_mesh_records_total",
        "Records received, by what the merge did with them.",
        "outcome",
        [
            ("merged", r.records_merged),
            ("stale", r.records_stale),
            ("tombstoned", r.records_tombstoned),
            ("table_full", r.records_table_full),
            ("forged", r.forged_records),
        ],
    );
    m.labeled_counter(
        "tollgate_mesh_heartbeats_received_total",
        "Heartbeats received: applied, or naming content this node lacks (then pulled).",
        "outcome",
        [
            ("applied", r.heartbeats_applied),
            ("unmatched", r.heartbeats_unmatched),
        ],
    );
    m.counter(
        "tollgate_mesh_emissions_total",
        "Own-record emissions (pushes and heartbeats); each bumps seq.",
        r.emissions,
    );
    m.counter(
        "tollgate_mesh_duplicate_node_alarms_total",
        "Times this node saw its own id with a newer version (a duplicate node or lost state).",
        r.duplicate_node_alarms,
    );
    m.counter(
        "tollgate_mesh_frames_refused_total",
        "Frames refused by the replica (the connection is closed).",
        r.frames_refused,
    );
    m.counter(
        "tollgate_mesh_answers_rate_limited_total",
        "Pull, digest and license requests not answered because they came too soon.",
        r.answers_rate_limited,
    );
}

/// The HEP collector's lines (`tollgate_hep_*`).
fn render_hep(m: &mut MetricsWriter, hep: &HepSnapshot) {
    let t = &hep.ingest.totals;
    m.counter(
        "tollgate_hep_datagrams_total",
        "Datagrams received on the HEP socket.",
        t.datagrams,
    );
    m.counter(
        "tollgate_hep_bytes_total",
        "Bytes received on the HEP socket.",
        t.bytes,
    );
    m.labeled_counter(
        "tollgate_hep_packets_total",
        "HEP packets by result: sip, log, other_protocol, or why dropped.",
        "result",
        HepResult::LABELS.iter().copied().zip(hep.packets),
    );
    m.labeled_counter(
        "tollgate_hep_sip_malformed_total",
        "Mirrored SIP messages that did not parse, by reason.",
        "reason",
        tollgate_sip::SipError::LABELS
            .iter()
            .copied()
            .zip(hep.tracker.malformed),
    );
    m.labeled_counter(
        "tollgate_hep_tracker_total",
        "What the mirror tracker did with SIP messages (calls started, duplicates absorbed, ...).",
        "counter",
        hep.tracker
            .pairs()
            .into_iter()
            .filter(|(name, _)| *name != "malformed_total"),
    );
    m.labeled_gauge(
        "tollgate_hep_tracker_entries",
        "Entries the mirror tracker holds, by table.",
        "table",
        [
            ("dialogs", hep.dialogs),
            ("pending", hep.pending),
            ("aors", hep.aors),
        ],
    );
    m.labeled_counter(
        "tollgate_hep_events_total",
        "Events the HEP collector applied to the tables, by verb.",
        "verb",
        Verb::ALL
            .iter()
            .map(|v| (v.as_str(), t.events[*v as usize])),
    );
    m.labeled_counter(
        "tollgate_hep_event_outcomes_total",
        "What the HEP collector's events did to the tables.",
        "outcome",
        EventOutcome::ALL
            .iter()
            .map(|o| (o.as_str(), t.outcomes[*o as usize])),
    );
    m.labeled_counter(
        "tollgate_hep_log_lines_malformed_total",
        "Malformed text-protocol lines in HEP LOG packets, by reason.",
        "reason",
        Malformed::ALL
            .iter()
            .map(|r| (r.as_str(), t.malformed[*r as usize])),
    );
    m.counter(
        "tollgate_hep_kernel_drops_total",
        "Datagrams the kernel dropped because the HEP socket's receive queue was full.",
        hep.ingest.kernel_drops,
    );
    m.counter(
        "tollgate_hep_receive_errors_total",
        "Failed receive calls on the HEP socket.",
        t.recv_errors,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hep_counters_render_as_their_families() {
        let mut hep = HepSnapshot::default();
        hep.packets[HepResult::AuthFailed as usize] = 2;
        hep.tracker.calls_started = 1;
        hep.dialogs = 1;
        hep.ingest.totals.events[Verb::CallStart as usize] = 1;
        let mut m = MetricsWriter::default();
        render_hep(&mut m, &hep);
        let text = m.finish();
        assert!(text.contains("tollgate_hep_packets_total{result=\"auth_failed\"} 2\n"));
        assert!(text.contains("tollgate_hep_tracker_total{counter=\"calls_started\"} 1\n"));
        assert!(text.contains("# TYPE tollgate_hep_tracker_entries gauge\n"));
        assert!(text.contains("tollgate_hep_tracker_entries{table=\"dialogs\"} 1\n"));
        assert!(text.contains("tollgate_hep_events_total{verb=\"call-start\"} 1\n"));
        assert!(!text.contains("malformed_total\""), "{text}");
    }
}

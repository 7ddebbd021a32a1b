//! `/metrics`: Prometheus text exposition (version 0.0.4) of what the session and the DHT
//! node count: bytes per torrent and in total, rates, peers, piece failures, bans, DHT
//! nodes and query counters, and the API's own actions.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::api::AppState;
use super::State as TState;

/// A label value with `\`, `"` and newlines escaped.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let d = &st.daemon;
    let all = d.list();
    let dht = d.dht_summary().await;
    let mut o = Out(String::new());

    o.head("swarm_torrents", "gauge", "Torrents in the list, by state.");
    for state in [
        TState::Starting,
        TState::Metadata,
        TState::Downloading,
        TState::Seeding,
        TState::Stopping,
        TState::Paused,
        TState::Error,
    ] {
        let n = all.iter().filter(|s| s.state == state).count();
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(o.0, "swarm_torrents{{state=\"{name}\"}} {n}");
    }

    type Field = fn(&wire::session::TorrentStats) -> f64;
    // Byte counters over every run of a torrent (pauses included), so they never go down.
    for (name, help, up) in [
        (
            "swarm_torrent_downloaded_bytes_total",
            "Payload bytes accepted from peers, per torrent, since the daemon started.",
            false,
        ),
        (
            "swarm_torrent_uploaded_bytes_total",
            "Payload bytes sent to peers, per torrent, since the daemon started.",
            true,
        ),
    ] {
        o.head(name, "counter", help);
        for s in &all {
            let _ = writeln!(
                o.0,
                "{name}{{info_hash=\"{}\",name=\"{}\"}} {}",
                s.info_hash.to_hex(),
                esc(s.name.as_deref().unwrap_or("")),
                if up { s.total_up } else { s.total_down }
            );
        }
    }
    let per: [(&str, &str, &str, Field); 6] = [
        (
            "swarm_torrent_wasted_bytes_total",
            "counter",
            "Payload bytes received but not needed, per torrent.",
            |s| s.wasted as f64,
        ),
        (
            "swarm_torrent_download_rate_bytes",
            "gauge",
            "Download rate in bytes per second, per torrent.",
            |s| s.download_rate,
        ),
        (
            "swarm_torrent_upload_rate_bytes",
            "gauge",
            "Upload rate in bytes per second, per torrent.",
            |s| s.upload_rate,
        ),
        (
            "swarm_torrent_peers",
            "gauge",
            "Connected peers (handshake done), per torrent.",
            |s| s.peers.len() as f64,
        ),
        (
            "swarm_torrent_piece_failures_total",
            "counter",
            "Pieces that failed the hash check, per torrent.",
            |s| f64::from(s.hash_failures),
        ),
        (
            "swarm_torrent_banned_peers",
            "gauge",
            "Endpoints banned for sending bad data, per torrent.",
            |s| s.banned as f64,
        ),
    ];
    let running: Vec<_> = all
        .iter()
        .filter(|s| s.state != TState::Paused)
        .filter_map(|s| s.stats.as_ref().map(|st| (s, st)))
        .collect();
    for (name, kind, help, f) in per {
        o.head(name, kind, help);
        for (s, st) in &running {
            let label = esc(s.name.as_deref().unwrap_or(""));
            let _ = writeln!(
                o.0,
                "{name}{{info_hash=\"{}\",name=\"{label}\"}} {}",
                s.info_hash.to_hex(),
                f(st)
            );
        }
    }
    o.head(
        "swarm_torrent_progress_ratio",
        "gauge",
        "Fraction of the payload verified, per torrent (0 to 1).",
    );
    for s in &all {
        let _ = writeln!(
            o.0,
            "swarm_torrent_progress_ratio{{info_hash=\"{}\",name=\"{}\"}} {}",
            s.info_hash.to_hex(),
            esc(s.name.as_deref().unwrap_or("")),
            s.progress()
        );
    }

    let (rm_down, rm_up) = d.removed_totals();
    let sum = |f: Field| running.iter().map(|(_, st)| f(st)).sum::<f64>();
    o.one(
        "swarm_downloaded_bytes_total",
        "counter",
        "Payload bytes downloaded by every torrent since the daemon started (removed ones included).",
        all.iter().map(|s| s.total_down).sum::<u64>() + rm_down,
    );
    o.one(
        "swarm_uploaded_bytes_total",
        "counter",
        "Payload bytes uploaded by every torrent since the daemon started (removed ones included).",
        all.iter().map(|s| s.total_up).sum::<u64>() + rm_up,
    );
    o.one(
        "swarm_download_rate_bytes",
        "gauge",
        "Download rate of all torrents, bytes per second.",
        sum(|s| s.download_rate),
    );
    o.one(
        "swarm_upload_rate_bytes",
        "gauge",
        "Upload rate of all torrents, bytes per second.",
        sum(|s| s.upload_rate),
    );
    o.one(
        "swarm_peers",
        "gauge",
        "Connected peers over all torrents.",
        sum(|s| s.peers.len() as f64),
    );
    o.one(
        "swarm_piece_failures_total",
        "counter",
        "Pieces that failed the hash check, all torrents.",
        sum(|s| f64::from(s.hash_failures)),
    );
    o.one(
        "swarm_banned_peers",
        "gauge",
        "Endpoints banned for bad data, all torrents.",
        sum(|s| s.banned as f64),
    );

    o.one(
        "swarm_dht_enabled",
        "gauge",
        "1 when the daemon runs a DHT node.",
        u8::from(dht.enabled),
    );
    if let Some(s) = &dht.stats {
        o.head(
            "swarm_dht_nodes",
            "gauge",
            "Nodes in the DHT routing table.",
        );
        let _ = writeln!(o.0, "swarm_dht_nodes{{family=\"ipv4\"}} {}", s.nodes4);
        let _ = writeln!(o.0, "swarm_dht_nodes{{family=\"ipv6\"}} {}", s.nodes6);
        let counters: [(&str, &str, u64); 9] = [
            (
                "swarm_dht_queries_received_total",
                "KRPC queries received.",
                s.queries_received,
            ),
            (
                "swarm_dht_responses_sent_total",
                "KRPC responses sent.",
                s.responses_sent,
            ),
            (
                "swarm_dht_errors_sent_total",
                "KRPC errors sent.",
                s.errors_sent,
            ),
            (
                "swarm_dht_queries_sent_total",
                "KRPC queries sent.",
                s.queries_sent,
            ),
            (
                "swarm_dht_responses_received_total",
                "KRPC responses received.",
                s.responses_received,
            ),
            (
                "swarm_dht_timeouts_total",
                "KRPC queries that timed out.",
                s.timeouts,
            ),
            (
                "swarm_dht_invalid_packets_total",
                "Datagrams that were not valid KRPC.",
                s.invalid_packets,
            ),
            (
                "swarm_dht_rate_limited_total",
                "Queries dropped by the per-IP rate limit.",
                s.rate_limited,
            ),
            (
                "swarm_dht_announces_stored_total",
                "announce_peer queries stored.",
                s.announces_stored,
            ),
        ];
        for (name, help, v) in counters {
            o.one(name, "counter", help, v);
        }
        o.one(
            "swarm_dht_lookups_active",
            "gauge",
            "DHT lookups running now.",
            s.lookups,
        );
        o.one(
            "swarm_dht_stored_peers",
            "gauge",
            "Peers stored for other torrents (announces we answer).",
            s.peers,
        );
    }
    o.one(
        "swarm_dht_torrent_lookups_total",
        "counter",
        "Lookup-and-announce rounds finished by running torrents.",
        dht.lookups_done,
    );

    let c = d.counters();
    o.head(
        "swarm_api_actions_total",
        "counter",
        "Torrent actions done through the API.",
    );
    for (action, n) in [
        ("add", c.added),
        ("remove", c.removed),
        ("pause", c.paused),
        ("resume", c.resumed),
    ] {
        let _ = writeln!(o.0, "swarm_api_actions_total{{action=\"{action}\"}} {n}");
    }
    o.one(
        "swarm_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        d.uptime().as_secs_f64(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.0,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_escaped() {
        assert_eq!(super::esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

//! Progress display: an indicatif bar on a terminal, periodic log lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// One observation of a transfer.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub done_bytes: u64,
    /// `None` until the metadata is known.
    pub total_bytes: Option<u64>,
    pub down_rate: f64,
    pub up_rate: f64,
    pub peers: usize,
    pub dht_nodes: usize,
    /// Why there are no DHT nodes (no router resolves, none answers, the DHT is off).
    pub dht_note: Option<String>,
    /// A short state word: "metadata", "downloading", "seeding", ...
    pub state: &'static str,
}

/// Draws progress on stderr: a bar when stderr is a terminal, otherwise a log line every
/// `line_interval` so logs stay readable in CI and under `nohup`.
pub struct Progress {
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    line_interval: Duration,
    label: String,
    silent: bool,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Self::with_terminal(label, std::io::stderr().is_terminal())
    }

    /// Draws nothing at all (seeders inside `swarm demo`).
    pub fn hidden(label: &str) -> Self {
        let mut p = Self::with_terminal(label, false);
        p.silent = true;
        p
    }

    fn with_terminal(label: &str, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            bar,
            last_line: None,
            line_interval: Duration::from_secs(5),
            label: label.to_string(),
            silent: false,
        }
    }

    pub fn update(&mut self, s: &Snapshot) {
        if self.silent {
            return;
        }
        let dht = match &s.dht_note {
            Some(note) => format!("{} DHT nodes ({note})", s.dht_nodes),
            None => format!("{} DHT nodes", s.dht_nodes),
        };
        let msg = format!(
            "{} | down {}/s up {}/s | {} peers | {dht}",
            s.state,
            human_bytes(s.down_rate as u64),
            human_bytes(s.up_rate as u64),
            s.peers,
        );
        if let Some(bar) = &self.bar {
            bar.set_length(s.total_bytes.unwrap_or(0));
            bar.set_position(s.done_bytes);
            bar.set_message(msg);
            return;
        }
        let now = Instant::now();
        if self
            .last_line
            .is_none_or(|t| now.duration_since(t) >= self.line_interval)
        {
            self.last_line = Some(now);
            let pct = match s.total_bytes {
                Some(t) if t > 0 => format!("{:.1}%", s.done_bytes as f64 * 100.0 / t as f64),
                _ => "?%".to_string(),
            };
            eprintln!("{}: {pct} {msg}", self.label);
        }
    }

    pub fn finish(&self, message: &str) {
        if self.silent {
            return;
        }
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => eprintln!("{}: {message}", self.label),
        }
    }
}

/// Bytes with a binary unit: "512 B", "1.5 KiB", "3.2 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}

//! Lower bounds for distributing one file to N peers (the fluid model of Kumar & Ross,
//! "Peer-assisted file distribution: the minimum distribution time", 2006).
//!
//! With a seeder of upload `u_s` and N leechers with uploads `u_i` and downloads `d_i`,
//! no schedule can deliver a file of F bytes to everyone faster than
//!
//! ```text
//! T_min = max( F / u_s,                   the seeder must send every byte at least once
//!              F / d_min,                 the slowest downloader must receive F bytes
//!              N F / (u_s + sum u_i) )    N F bytes must be uploaded by someone
//! ```
//!
//! and the bound is achievable in the fluid limit. Client-server distribution (the seeder
//! serves everyone alone) needs `max(N F / u_s, F / d_min)`.

use crate::net::capacity::Capacity;

#[derive(Clone, Debug)]
pub struct Distribution {
    /// File size in bytes.
    pub file_bytes: f64,
    /// Seeder upload, bytes per second.
    pub seed_upload: f64,
    pub leechers: Vec<Capacity>,
}

/// Which term of the bound binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bottleneck {
    SeederUpload,
    SlowestDownload,
    AggregateUpload,
}

impl Distribution {
    fn n(&self) -> f64 {
        self.leechers.len() as f64
    }

    fn d_min(&self) -> f64 {
        self.leechers
            .iter()
            .map(|c| c.download)
            .fold(f64::INFINITY, f64::min)
    }

    fn total_upload(&self) -> f64 {
        self.seed_upload + self.leechers.iter().map(|c| c.upload).sum::<f64>()
    }

    /// The three terms of the bound, in seconds.
    pub fn terms(&self) -> [(Bottleneck, f64); 3] {
        let f = self.file_bytes;
        [
            (Bottleneck::SeederUpload, f / self.seed_upload),
            (Bottleneck::SlowestDownload, f / self.d_min()),
            (
                Bottleneck::AggregateUpload,
                self.n() * f / self.total_upload(),
            ),
        ]
    }

    /// The minimum distribution time T_min in seconds, and the term that sets it.
    pub fn p2p_lower_bound(&self) -> (f64, Bottleneck) {
        self.terms().into_iter().map(|(b, t)| (t, b)).fold(
            (0.0, Bottleneck::SeederUpload),
            |acc, x| if x.0 > acc.0 { x } else { acc },
        )
    }

    /// The time for the seeder alone to serve everyone, in seconds.
    pub fn client_server_time(&self) -> f64 {
        (self.n() * self.file_bytes / self.seed_upload).max(self.file_bytes / self.d_min())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn homogeneous(n: usize, up: f64, down: f64) -> Distribution {
        Distribution {
            file_bytes: 100e6,
            seed_upload: 1e6,
            leechers: vec![
                Capacity {
                    upload: up,
                    download: down
                };
                n
            ],
        }
    }

    #[test]
    fn seeder_bound_binds_for_a_single_fast_leecher() {
        let d = homogeneous(1, 10e6, 10e6);
        let (t, b) = d.p2p_lower_bound();
        assert_eq!(b, Bottleneck::SeederUpload);
        assert!((t - 100.0).abs() < 1e-9);
        assert!((d.client_server_time() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn slow_downloader_binds_when_downloads_are_scarce() {
        let d = homogeneous(2, 10e6, 0.5e6);
        assert_eq!(d.p2p_lower_bound(), (200.0, Bottleneck::SlowestDownload));
    }

    #[test]
    fn aggregate_upload_binds_for_large_swarms_and_p2p_scales() {
        // 1000 leechers at 0.5 MB/s up: N F / (u_s + sum u_i) = 1e11 / 501e6 ~ 199.6 s,
        // while client-server needs N F / u_s = 100,000 s.
        let d = homogeneous(1000, 0.5e6, 5e6);
        let (t, b) = d.p2p_lower_bound();
        assert_eq!(b, Bottleneck::AggregateUpload);
        assert!((t - 1e11 / 501e6).abs() < 1e-6);
        assert!((d.client_server_time() - 100_000.0).abs() < 1e-6);
        // Doubling the swarm barely moves T_min: it grows like N / (1 + N u / u_s).
        let (t2, _) = homogeneous(2000, 0.5e6, 5e6).p2p_lower_bound();
        assert!(t2 / t < 1.01, "{t2} vs {t}");
    }
}

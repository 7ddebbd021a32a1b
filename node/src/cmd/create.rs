//! `swarm create`: make a .torrent for a file or a directory and print its magnet link.
//!
//! The magnet link is the only thing on stdout (one line), so scripts can capture it; the
//! progress bar goes to stderr and only when stderr is a terminal. The .torrent is written
//! atomically (temporary file, fsync, then link/rename into place) and never replaces an
//! existing file unless `--force` is given.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use wire::create::{create_torrent, CreateOptions};

/// Arguments of `swarm create`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file or directory to share.
    pub path: PathBuf,
    /// Where to write the .torrent (default: NAME.torrent in the current directory).
    #[arg(short, long, value_name = "FILE.torrent")]
    pub output: Option<PathBuf>,
    /// Piece length in bytes, or with a suffix: 256K, 1M, 4MiB (a power of two, 16K..64M).
    /// Chosen automatically (about 1,000-2,000 pieces) when not given.
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub piece_length: Option<u64>,
    /// A tracker URL (repeat for several; none by default: peers come from the DHT).
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// Mark the torrent private (BEP 27: clients then use only its trackers, not the DHT).
    #[arg(long)]
    pub private: bool,
    /// A comment stored in the .torrent.
    #[arg(long)]
    pub comment: Option<String>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Hashing threads (default: all cores).
    #[arg(long, env = "SWARM_THREADS")]
    pub threads: Option<usize>,
}

/// Parses `262144`, `256K`, `256k`, `256KiB`, `1M`, `1MiB`, `1MB` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 262144, 256K, 1M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{s:?}: unknown unit (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(t) = args.trackers.iter().find(|t| t.trim().is_empty()) {
        bail!("empty tracker URL {t:?}");
    }
    let opts = CreateOptions {
        piece_length: args.piece_length,
        trackers: args.trackers.clone(),
        private: args.private,
        comment: args.comment.clone(),
        created_by: Some(concat!("swarm/", env!("CARGO_PKG_VERSION")).to_string()),
        creation_date: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs() as i64),
        threads: args.threads,
    };

    // Refuse early (before hashing for minutes) when the output exists.
    let planned_output = args.output.clone();
    if let Some(out) = &planned_output {
        refuse_existing(out, args.force)?;
    }

    let bar = progress_bar();
    let created = create_torrent(&args.path, &opts, &|done| bar.set_position(done))
        .with_context(|| format!("cannot create a torrent of {}", args.path.display()))?;
    bar.finish_and_clear();

    let output = planned_output
        .unwrap_or_else(|| PathBuf::from(format!("{}.torrent", created.metainfo.info.name)));
    refuse_existing(&output, args.force)?;
    write_atomically(&output, &created.bytes, args.force)
        .with_context(|| format!("cannot write {}", output.display()))?;

    let info = &created.metainfo.info;
    eprintln!(
        "wrote {} ({} files, {} bytes, {} pieces of {} bytes)",
        output.display(),
        info.files.len(),
        info.total_length,
        info.num_pieces(),
        info.piece_length
    );
    // Not println!: a closed stdout must be an error, not a panic.
    writeln!(std::io::stdout().lock(), "{}", created.magnet).context("cannot write to stdout")?;
    Ok(())
}

fn refuse_existing(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        bail!(
            "{} already exists (use --force to replace it)",
            path.display()
        );
    }
    Ok(())
}

/// A bar of bytes hashed on stderr, hidden when stderr is not a terminal.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "hashing {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
    }
    bar
}

/// Writes `bytes` to a temporary file next to `dest`, syncs it, then puts it in place:
/// with a hard link when not forcing (fails if `dest` appeared meanwhile, never clobbers),
/// with a rename when forcing.
fn write_atomically(dest: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if force {
            std::fs::rename(&tmp, dest)?;
        } else {
            match std::fs::hard_link(&tmp, dest) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    bail!(
                        "{} already exists (use --force to replace it)",
                        dest.display()
                    )
                }
                r => r?,
            }
            std::fs::remove_file(&tmp)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("262144"), Ok(262_144));
        assert_eq!(parse_size("256K"), Ok(262_144));
        assert_eq!(parse_size("256kib"), Ok(262_144));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert!(parse_size("1.5M").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}

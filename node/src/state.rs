//! Where `swarm` keeps its state (DHT routing table, resume data): `--state-dir`, else
//! `$XDG_DATA_HOME/swarm`, else `$HOME/.local/share/swarm`, else `./.swarm`.

use std::path::{Path, PathBuf};

/// Resolves the state directory and creates it.
pub fn state_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match explicit {
        Some(p) => p.to_path_buf(),
        None => default_state_dir(),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create state directory {}: {e}", dir.display()))?;
    Ok(dir)
}

fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("swarm");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/swarm");
    }
    PathBuf::from(".swarm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let want = tmp.path().join("a/b");
        let got = state_dir(Some(&want)).unwrap();
        assert_eq!(got, want);
        assert!(want.is_dir());
    }
}

//! File paths from untrusted torrents: every component is checked before it can name a file
//! on disk, so no torrent can write outside the directory it is downloaded into.
//!
//! Policy (one rule for every platform, so a torrent that is safe here is safe everywhere):
//! a component must be non-empty, must not be `.` or `..`, and must not contain `/`, `\`,
//! NUL, or look like a Windows drive (`C:`). Components longer than
//! [`MAX_COMPONENT_BYTES`] and paths deeper than [`MAX_PATH_DEPTH`] are refused too. `.` is
//! refused rather than dropped: silently rewriting paths would let two different paths in a
//! torrent collide.

use std::path::{Component, Path, PathBuf};

/// Longest accepted path component, in bytes (NAME_MAX on Linux and most filesystems).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Deepest accepted file path (components, including the torrent's directory name).
pub const MAX_PATH_DEPTH: usize = 64;

/// Why a path component is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsafeReason {
    Empty,
    Dot,
    DotDot,
    Slash,
    Backslash,
    Nul,
    DriveLetter,
    TooLong,
    TooDeep,
}

impl UnsafeReason {
    pub fn describe(self) -> &'static str {
        match self {
            UnsafeReason::Empty => "empty path component",
            UnsafeReason::Dot => "`.` path component",
            UnsafeReason::DotDot => "`..` path component (directory traversal)",
            UnsafeReason::Slash => "`/` inside a path component (absolute path or traversal)",
            UnsafeReason::Backslash => "backslash inside a path component",
            UnsafeReason::Nul => "NUL byte in a path component",
            UnsafeReason::DriveLetter => "Windows drive letter in a path component",
            UnsafeReason::TooLong => "path component longer than 255 bytes",
            UnsafeReason::TooDeep => "path deeper than 64 components",
        }
    }
}

impl std::fmt::Display for UnsafeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Checks one path component from a torrent (or a file name going into one).
pub fn check_component(c: &str) -> Result<(), UnsafeReason> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err(UnsafeReason::Empty);
    }
    if c == "." {
        return Err(UnsafeReason::Dot);
    }
    if c == ".." {
        return Err(UnsafeReason::DotDot);
    }
    if b.contains(&0) {
        return Err(UnsafeReason::Nul);
    }
    if b.contains(&b'/') {
        return Err(UnsafeReason::Slash);
    }
    if b.contains(&b'\\') {
        return Err(UnsafeReason::Backslash);
    }
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(UnsafeReason::DriveLetter);
    }
    if b.len() > MAX_COMPONENT_BYTES {
        return Err(UnsafeReason::TooLong);
    }
    Ok(())
}

/// Checks a whole relative path given as components.
pub fn check_components<S: AsRef<str>>(components: &[S]) -> Result<(), UnsafeReason> {
    if components.is_empty() {
        return Err(UnsafeReason::Empty);
    }
    if components.len() > MAX_PATH_DEPTH {
        return Err(UnsafeReason::TooDeep);
    }
    components
        .iter()
        .try_for_each(|c| check_component(c.as_ref()))
}

/// Shows a torrent path for an error message: components joined by `/`, each escaped so
/// control characters and NULs are visible.
pub fn display_path<S: AsRef<str>>(components: &[S]) -> String {
    let parts: Vec<String> = components
        .iter()
        .map(|c| c.as_ref().escape_debug().to_string())
        .collect();
    parts.join("/")
}

/// A file path that would leave the output directory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("unsafe path \"{path}\": {reason}")]
    Unsafe { path: String, reason: UnsafeReason },
    #[error("unsafe path \"{path}\": {} is a symbolic link", existing.display())]
    SymlinkOnDisk { path: String, existing: PathBuf },
    #[error("cannot inspect {}: {message}", existing.display())]
    Io { existing: PathBuf, message: String },
}

/// Joins checked components under `root`. The result always has `root` as a prefix and no
/// `..`, `.` or root components after it (checked again here, not just assumed).
pub fn join_under<S: AsRef<str>>(root: &Path, components: &[S]) -> Result<PathBuf, ResolveError> {
    let unsafe_path = |reason| ResolveError::Unsafe {
        path: display_path(components),
        reason,
    };
    check_components(components).map_err(unsafe_path)?;
    let mut out = root.to_path_buf();
    for c in components {
        let rel = Path::new(c.as_ref());
        // Belt and braces: the component must be exactly one normal path component here.
        let mut parts = rel.components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) => out.push(rel),
            _ => return Err(unsafe_path(UnsafeReason::Slash)),
        }
    }
    debug_assert!(out.starts_with(root));
    Ok(out)
}

/// Like [`join_under`], and also refuses when any directory or file already on disk along
/// the path below `root` is a symbolic link (which could point anywhere). Components that do
/// not exist yet are fine.
pub fn resolve_on_disk<S: AsRef<str>>(
    root: &Path,
    components: &[S],
) -> Result<PathBuf, ResolveError> {
    let full = join_under(root, components)?;
    let mut at = root.to_path_buf();
    for c in components {
        at.push(c.as_ref());
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ResolveError::SymlinkOnDisk {
                    path: display_path(components),
                    existing: at,
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => {
                return Err(ResolveError::Io {
                    existing: at,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "a",
            "file.txt",
            "..a",
            "a..",
            "...",
            ".hidden",
            "Ep 1: x",
            "Ünïcödé 名前",
        ] {
            assert_eq!(check_component(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn refuses_every_escape() {
        let cases = [
            ("", UnsafeReason::Empty),
            (".", UnsafeReason::Dot),
            ("..", UnsafeReason::DotDot),
            ("/etc", UnsafeReason::Slash),
            ("a/b", UnsafeReason::Slash),
            ("a\\..\\b", UnsafeReason::Backslash),
            ("a\0b", UnsafeReason::Nul),
            ("C:", UnsafeReason::DriveLetter),
            ("c:x", UnsafeReason::DriveLetter),
        ];
        for (c, why) in cases {
            assert_eq!(check_component(c), Err(why), "{c:?}");
        }
        assert_eq!(
            check_component(&"x".repeat(256)),
            Err(UnsafeReason::TooLong)
        );
        assert_eq!(check_component(&"x".repeat(255)), Ok(()));
    }

    #[test]
    fn join_stays_under_root() {
        let root = Path::new("/srv/out");
        assert_eq!(
            join_under(root, &["t", "a", "b.bin"]).unwrap(),
            PathBuf::from("/srv/out/t/a/b.bin")
        );
        let err = join_under(root, &["t", "..", "..", "x"]).unwrap_err();
        assert_eq!(
            err,
            ResolveError::Unsafe {
                path: "t/../../x".into(),
                reason: UnsafeReason::DotDot
            }
        );
        assert!(err.to_string().contains("t/../../x"));
        assert!(join_under::<&str>(root, &[]).is_err());
        let deep: Vec<&str> = vec!["d"; MAX_PATH_DEPTH + 1];
        assert!(matches!(
            join_under(root, &deep),
            Err(ResolveError::Unsafe {
                reason: UnsafeReason::TooDeep,
                ..
            })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlinks_already_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("t")).unwrap();
        let err = resolve_on_disk(dir.path(), &["t", "x"]).unwrap_err();
        assert!(matches!(err, ResolveError::SymlinkOnDisk { .. }), "{err}");
        std::fs::create_dir(dir.path().join("u")).unwrap();
        assert_eq!(
            resolve_on_disk(dir.path(), &["u", "new", "x"]).unwrap(),
            dir.path().join("u/new/x")
        );
    }
}

//! Durable file writes: the one way every file tollgate writes reaches the disk (agent
//! state, license files, the CLI's keys, the license server's keys and TLS files, mesh
//! certificates).
//!
//! [`write`] (replace) and [`write_new`] (never over an existing file) both:
//! 1. take this process's lock for the target path (one writer per path at a time: two
//!    threads writing the same file are serialized, two different files never share
//!    anything);
//! 2. create a temp file beside the target with a name unique to this process and write
//!    (`.<name>.tmp-<pid>-<counter>`, `O_EXCL`, the final mode set before any byte);
//! 3. `fsync` the temp file;
//! 4. `rename` it over the target ([`write`]) or `link` it to the target, which fails if the
//!    target exists ([`write_new`]), then remove the temp name;
//! 5. `fsync` the directory, so the new name survives a power loss.
//!
//! **A failed write never removes or damages the file it was replacing:** every failure
//! before step 4 leaves the target as it was and removes the temp file; step 4 is atomic.
//! A crash at any point leaves the old file or the new one, plus at most one temp file whose
//! name starts with `.` and contains `.tmp-` ([`is_temp_name`]); [`remove_stale_temps`]
//! clears those at start-up.
//!
//! [`write_with`] streams the contents through a closure (a snapshot of millions of entries
//! is written without building it in memory first).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

/// Why a durable write failed. The target file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// [`write_new`] found the target already there.
    #[error("{path}: already exists")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl DurableError {
    /// The underlying IO error kind (`AlreadyExists` for [`DurableError::Exists`]).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            DurableError::Exists { .. } => io::ErrorKind::AlreadyExists,
            DurableError::Io { source, .. } => source.kind(),
        }
    }

    /// Whether the disk (or the quota) was full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, DurableError::Io { source, .. } if source.raw_os_error() == Some(28) || source.raw_os_error() == Some(122))
    }
}

impl From<DurableError> for io::Error {
    fn from(e: DurableError) -> io::Error {
        match e {
            DurableError::Exists { path } => io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: already exists", path.display()),
            ),
            DurableError::Io { source, .. } => source,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DurableError + '_ {
    move |source| DurableError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One lock per target path, for this process. Entries are dropped again when no writer
/// holds them, so the map holds only paths being written right now.
static PATH_LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Holds the per-path lock; removes the map entry when the last holder leaves.
struct PathGuard {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl PathGuard {
    fn new(path: &Path) -> PathGuard {
        let lock = Arc::clone(
            PATH_LOCKS
                .lock()
                .entry(path.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(()))),
        );
        PathGuard {
            path: path.to_owned(),
            lock,
        }
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        let mut map = PATH_LOCKS.lock();
        // Two references: the map's and ours. More means another writer waits on it.
        if Arc::strong_count(&self.lock) <= 2 {
            map.remove(&self.path);
        }
    }
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Whether a file name is one of this module's temp files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_dir(path).join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// `fsync` of a directory, so renames and new names in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Replaces `path` with `bytes` durably (module doc). `mode` is exact, whatever the umask.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    write_with(path, mode, |w| w.write_all(bytes))
}

/// Like [`write`], but the contents come from `fill`, written through a buffered writer.
/// An error from `fill` aborts the write and leaves `path` as it was.
pub fn write_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), DurableError> {
    let guard = PathGuard::new(path);
    let _held = guard.lock.lock();
    let tmp = stage(path, mode, fill)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    sync_dir(parent_dir(path))
}

/// Creates `path` with `bytes` durably; fails with [`DurableError::Exists`] (and changes
/// nothing) if it is already there. For keys and certificates that must never be replaced.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let guard = PathGuard::new(path);
    let _held = guard.lock.lock();
    if path.symlink_metadata().is_ok() {
        return Err(DurableError::Exists {
            path: path.to_owned(),
        });
    }
    let tmp = stage(path, mode, |w| w.write_all(bytes))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_dir(parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(DurableError::Exists {
            path: path.to_owned(),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes a fresh temp file beside `path`, synced; removes it on any failure.
fn stage(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<PathBuf, DurableError> {
    let tmp = temp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let written = (|| {
        // The umask may have narrowed the mode: set it exactly before any byte is written.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let mut w = BufWriter::with_capacity(64 * 1024, &file);
        fill(&mut w)?;
        w.flush()?;
        drop(w);
        file.sync_all()
    })();
    drop(file);
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io_err(path)(e))
        }
    }
}

/// Removes temp files a crash left in `dir` (names per [`is_temp_name`]). Returns how many.
/// Call it only where no other process writes (e.g. a locked state directory).
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if is_temp_name(&name.to_string_lossy()) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_replaces_with_the_exact_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path), 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep");
        write(&path, b"old", 0o600).unwrap();
        let err = write_with(&path, 0o600, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk gone"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new(&path, b"first", 0o600).unwrap();
        let err = write_new(&path, b"second", 0o600).unwrap_err();
        assert!(matches!(err, DurableError::Exists { .. }), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writers_of_two_paths_never_mix_contents() {
        // The old agent shared one temp name between license.current and license.state.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("license.current");
        let b = dir.path().join("license.state");
        std::thread::scope(|s| {
            for (path, byte) in [(&a, b'a'), (&b, b'b'), (&a, b'A'), (&b, b'B')] {
                s.spawn(move || {
                    for len in 1..200 {
                        write(path, &vec![byte; len], 0o600).unwrap();
                    }
                });
            }
        });
        let a = std::fs::read(&a).unwrap();
        let b = std::fs::read(&b).unwrap();
        assert!(a.iter().all(|c| c.eq_ignore_ascii_case(&b'a')), "{a:?}");
        assert!(b.iter().all(|c| c.eq_ignore_ascii_case(&b'b')), "{b:?}");
        assert!(PATH_LOCKS.lock().is_empty() || !PATH_LOCKS.lock().contains_key(dir.path()));
    }

    #[test]
    fn stale_temps_are_recognised_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".usage.snapshot.tmp-123-4"), b"x").unwrap();
        std::fs::write(dir.path().join("usage.snapshot"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert!(dir.path().join("usage.snapshot").exists());
        assert!(is_temp_name(".a.tmp-1-2"));
        assert!(!is_temp_name("a.tmp"));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/file");
        let err = write(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}

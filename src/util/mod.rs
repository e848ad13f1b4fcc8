//! Generic helpers every layer may use, vqlab's bottom layer: atomic file writes (every file
//! another process may read is written to a temporary name in the same directory, synced and
//! renamed into place, so a killed process never leaves a half-written file behind), advisory
//! lock files, timestamps, JSON flattening, signals and process liveness ([`process`]), the
//! wall-time profile of the fast ops and the optimizer ([`profile`]), and borrowing CPU
//! tensors' data ([`tensor`]).

pub mod process;
pub mod profile;
pub mod tensor;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The temporary sibling used while writing `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Remove the temporary files (`.<name>.tmp-<pid>`) in `dir` that a killed process left
/// behind: those whose writer is no longer alive. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) =
            name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        // A zombie writer (killed, not yet reaped by an init that does not reap) is dead.
        if !process::alive(pid) && e.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(e.path()).is_ok() {
            tracing::debug!("removed {} left by a killed process", e.path().display());
            removed += 1;
        }
    }
    removed
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })
}

/// Produce `path` atomically with a writer that fills the temporary file it is given.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let result = fill(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Refuse a directory that is a symbolic link: vqlab writes a sweep's files only inside its
/// sweep directory, and a link would send them elsewhere. (The runs dir and a sweep dir may be
/// links: that is where the user chose to put them.)
pub fn refuse_symlinked_dir(path: &Path) -> Result<(), crate::error::InputError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
            Err(crate::error::InputError::file(
                path,
                format!(
                    "is a symbolic link (to {target}); vqlab writes a run's files only inside its sweep directory: \
                     replace the link with a real directory"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// RFC 3339 UTC timestamp of now, e.g. `2026-11-25T02:31:07Z`.
pub fn timestamp_now() -> String {
    timestamp(unix_now() as i64)
}

/// RFC 3339 UTC timestamp of Unix seconds (civil-from-days, Howard Hinnant's algorithm).
pub fn timestamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An advisory `flock` on a lock file whose text names its holder. The kernel releases the
/// lock when the holder dies, however it dies, so a lock file left behind is no obstacle.
pub struct LockFile {
    file: std::fs::File,
    path: PathBuf,
}

impl LockFile {
    /// Open (creating) the lock file without taking the lock.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(LockFile { file, path: path.to_path_buf() })
    }

    /// Take the lock if it is free; false when another process holds it.
    pub fn try_lock(&self) -> anyhow::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", self.path.display())),
        }
    }

    /// Wait for the lock.
    pub fn lock(&self) -> anyhow::Result<()> {
        self.file.lock().with_context(|| format!("locking {}", self.path.display()))
    }

    /// Who the file says holds (or last held) the lock; "unknown" when it is empty.
    pub fn holder(&self) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let text = text.trim();
        if text.is_empty() {
            "unknown".into()
        } else {
            text.to_string()
        }
    }

    /// Record this process as the holder (call with the lock held).
    pub fn claim(&mut self) -> anyhow::Result<()> {
        self.file.set_len(0)?;
        writeln!(self.file, "pid {} on host {}", std::process::id(), process::hostname())?;
        self.file.sync_all()?;
        Ok(())
    }
}

/// Flatten nested objects into dotted keys (`{"a": {"b": 1}}` → `a.b = 1`); arrays stay values.
pub fn flatten(prefix: &str, v: &serde_json::Value, out: &mut serde_json::Map<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_dates() {
        // Checked against `date -u -d @SECS`.
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_795_570_267), "2026-11-25T01:31:07Z");
    }

    #[test]
    fn atomic_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"{}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! The sweep lock (`<sweep>/.lock`): one scheduler per sweep. It is an advisory `flock`, so
//! the kernel releases it when its holder dies, however it dies: a lock file left by a killed
//! scheduler is taken over by the next one. The file says who holds it (pid and host) for the
//! error message of a second scheduler.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::error::InputError;

pub const LOCK_FILE: &str = ".lock";

pub struct SweepLock {
    _file: File,
}

impl SweepLock {
    pub fn acquire(sweep_dir: &Path) -> anyhow::Result<SweepLock> {
        let path = sweep_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(InputError::file(
                    sweep_dir,
                    format!(
                        "the sweep is busy: another vqlab scheduler holds {} ({})",
                        path.display(),
                        if holder.is_empty() { "holder unknown" } else { holder }
                    ),
                )
                .into());
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        if !previous.trim().is_empty() {
            tracing::debug!("took over the sweep lock (last held by {})", previous.trim());
        }
        file.set_len(0)?;
        writeln!(file, "pid {} on host {}", std::process::id(), super::state::hostname())?;
        file.sync_all()?;
        Ok(SweepLock { _file: file })
    }
}

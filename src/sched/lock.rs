//! The sweep lock (`<sweep>/.lock`): one scheduler per sweep. It is an advisory `flock`
//! ([`LockFile`]), so the kernel releases it when its holder dies, however it dies: a lock
//! file left by a killed scheduler is taken over by the next one. The file names the holder
//! (pid and host) for the error message of a second scheduler.

use std::path::Path;

use crate::error::InputError;
use crate::fsutil::LockFile;

pub const LOCK_FILE: &str = ".lock";

pub struct SweepLock {
    _lock: LockFile,
}

impl SweepLock {
    pub fn acquire(sweep_dir: &Path) -> anyhow::Result<SweepLock> {
        let path = sweep_dir.join(LOCK_FILE);
        let mut lock = LockFile::open(&path)?;
        if !lock.try_lock()? {
            return Err(InputError::file(
                sweep_dir,
                format!("the sweep is busy: another vqlab scheduler holds {} ({})", path.display(), lock.holder()),
            )
            .into());
        }
        lock.claim()?;
        Ok(SweepLock { _lock: lock })
    }
}

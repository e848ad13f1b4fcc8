//! The sweep lock (`.lock` in the sweep dir): one scheduler per sweep. It is an advisory `flock`
//! ([`LockFile`]), so the kernel releases it when its holder dies, however it dies: a lock
//! file left by a killed scheduler is taken over by the next one. The file names the holder
//! (pid and host) for the error message of a second scheduler.

use crate::error::InputError;
use crate::util::LockFile;

use super::SweepDir;

pub struct SweepLock {
    _lock: LockFile,
}

impl SweepLock {
    pub fn acquire(sweep: &SweepDir) -> anyhow::Result<SweepLock> {
        let path = sweep.lock_file();
        let mut lock = LockFile::open(&path)?;
        if !lock.try_lock()? {
            return Err(InputError::file(
                sweep.path(),
                format!("the sweep is busy: another vqlab scheduler holds {} ({})", path.display(), lock.holder()),
            )
            .into());
        }
        lock.claim()?;
        Ok(SweepLock { _lock: lock })
    }
}

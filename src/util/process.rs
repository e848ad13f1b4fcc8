//! Processes: SIGINT / SIGTERM as a counter the scheduler and the workers poll (the first asks
//! for a clean stop, workers checkpoint and end `interrupted`; the scheduler escalates to
//! SIGKILL of its workers on the second), sending signals, liveness and the host name.

use std::sync::atomic::{AtomicUsize, Ordering};

static RECEIVED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    RECEIVED.fetch_add(1, Ordering::SeqCst);
}

/// Count SIGINT and SIGTERM (and, in Slurm batch scripts, SIGUSR1 is forwarded as SIGTERM).
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Signals received so far.
pub fn received() -> usize {
    RECEIVED.load(Ordering::SeqCst)
}

/// Send a signal to a process; false when it does not exist.
pub fn send(pid: u32, signal: libc::c_int) -> bool {
    pid > 0 && unsafe { libc::kill(pid as libc::pid_t, signal) } == 0
}

/// Whether a live process with this pid exists on this host. A zombie (dead, not yet
/// reaped: common in containers whose init does not reap) counts as gone.
pub fn alive(pid: u32) -> bool {
    if !send(pid, 0) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => true,
    }
}

/// This host's name (from the kernel; `$HOSTNAME` or "unknown" when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

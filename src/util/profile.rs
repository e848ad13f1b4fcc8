//! A per-op wall-time profile of vqlab's own CPU ops and its optimizer, for `vqlab bench
//! --profile`: each op's forward and backward pass, and each Adam update, is timed when
//! profiling is on (one relaxed atomic load when it is off). What they do not cover (candle's
//! elementwise ops, reductions and matmuls, its gradient bookkeeping, batch assembly) is the
//! step time minus their sum.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Start (or stop) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        if let Ok(mut t) = TOTALS.lock() {
            t.clear();
        }
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Run `f`, adding its wall time to `name`'s total when profiling is on. Ops are called from
/// the thread that runs the step, so nested calls do not overlap in time.
pub fn time<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let out = f();
    let secs = t0.elapsed().as_secs_f64();
    if let Ok(mut t) = TOTALS.lock() {
        let e = t.entry(name).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += secs;
    }
    out
}

/// What was recorded since `enable(true)`: (op pass, calls, seconds), slowest first.
pub fn totals() -> Vec<(&'static str, u64, f64)> {
    let mut v: Vec<_> = TOTALS.lock().map(|t| t.iter().map(|(k, (n, s))| (*k, *n, *s)).collect()).unwrap_or_default();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_enabled() {
        time("off", || ());
        enable(true);
        let v = time("on", || 7);
        time("on", || std::thread::sleep(std::time::Duration::from_millis(20)));
        enable(false);
        time("on", || ());
        assert_eq!(v, 7);
        // (Other tests may run ops meanwhile: only this test's names are checked.)
        let t = totals();
        assert!(!t.iter().any(|(name, _, _)| *name == "off"), "{t:?}");
        let on = t.iter().find(|(name, _, _)| *name == "on").unwrap();
        assert_eq!(on.1, 2);
        assert!(on.2 >= 0.02, "{t:?}");
    }
}

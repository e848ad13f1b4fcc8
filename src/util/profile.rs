//! A per-op wall-time profile of vqlab's own CPU ops and its optimizer, for `vqlab bench
//! --profile`: each op's forward and backward pass, and each Adam update, is timed when
//! profiling is on (one relaxed atomic load when it is off). What they do not cover (candle's
//! elementwise ops, reductions and matmuls, its gradient bookkeeping, batch assembly) is the
//! step time minus their sum. An op may also name what it ran on (a convolution its kernel,
//! stride, channels and map size, see [`time_detailed`]), so that each pass's time is broken
//! down by layer shape as well.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());
/// (pass, what it ran on) → (calls, seconds): the passes timed with [`time_detailed`].
type Details = BTreeMap<(&'static str, String), (u64, f64)>;
static DETAILS: Mutex<Details> = Mutex::new(BTreeMap::new());

/// Start (or stop) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        if let Ok(mut t) = TOTALS.lock() {
            t.clear();
        }
        if let Ok(mut t) = DETAILS.lock() {
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
    add(name, t0.elapsed().as_secs_f64());
    out
}

fn add(name: &'static str, secs: f64) {
    if let Ok(mut t) = TOTALS.lock() {
        let e = t.entry(name).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += secs;
    }
}

/// [`time`], also adding the wall time to (`name`, `detail()`)'s total: `detail` names what
/// this call ran on, and is only called while profiling is on.
pub fn time_detailed<T>(name: &'static str, detail: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let out = f();
    let secs = t0.elapsed().as_secs_f64();
    add(name, secs);
    if let Ok(mut t) = DETAILS.lock() {
        let e = t.entry((name, detail())).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += secs;
    }
    out
}

/// What [`time_detailed`] recorded for the pass `name` since `enable(true)`: (what it ran on,
/// calls, seconds), slowest first.
pub fn details(name: &str) -> Vec<(String, u64, f64)> {
    let mut v: Vec<_> = DETAILS
        .lock()
        .map(|t| t.iter().filter(|((n, _), _)| *n == name).map(|((_, d), (c, s))| (d.clone(), *c, *s)).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
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
    fn records_only_while_enabled_and_by_detail() {
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

        // (In the same test: tests run in parallel and profiling is process-wide.)
        enable(true);
        time_detailed("detailed pass", || "a".to_string(), || std::thread::sleep(std::time::Duration::from_millis(20)));
        time_detailed("detailed pass", || "b".to_string(), || ());
        time_detailed("detailed pass", || "a".to_string(), || ());
        enable(false);
        time_detailed("detailed pass", || panic!("not called while profiling is off"), || ());
        let t = totals();
        let pass = t.iter().find(|(name, _, _)| *name == "detailed pass").unwrap();
        assert_eq!(pass.1, 3);
        let d = details("detailed pass");
        assert_eq!(d.iter().map(|(k, c, _)| (k.as_str(), *c)).collect::<Vec<_>>(), [("a", 2), ("b", 1)], "{d:?}");
        // The same measurement goes to the pass and to its detail.
        assert!(d[0].2 >= 0.02 && (d[0].2 + d[1].2 - pass.2).abs() < 1e-12, "{d:?} {pass:?}");
    }
}

//! Helpers: run the vqlab binary in a temp dir, write experiment files.

use std::path::Path;
use std::process::{Command, Output};

pub fn vqlab(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("VQLAB_RUNS_DIR")
        .output()
        .expect("the vqlab binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// A tiny synthetic experiment that trains in seconds on CPU.
pub fn tiny_experiment(name: &str, extra: &str) -> String {
    format!(
        r#"[experiment]
name = "{name}"
[data]
dataset = "synthetic"
train_images = 256
eval_images = 64
[model]
hidden_channels = 16
res_channels = 8
res_blocks = 1
[quantizer]
codebook_size = 32
embed_dim = 8
[loss]
disc_start = 6
disc_channels = 8
[train]
steps = 12
batch_size = 16
lr = 1e-3
log_every = 3
eval_every = 6
checkpoint_every = 6
[eval]
batch_size = 64
sample_images = 4
fid = false
{extra}
"#
    )
}

/// The tiny experiment with FID-style scores on (a synthetic-shapes classifier is trained
/// once into the runs dir's cache: ~10 s).
pub fn tiny_experiment_fid(name: &str, extra: &str) -> String {
    tiny_experiment(name, extra).replace("fid = false", "fid = true\nkid_subsets = 10\nkid_subset_size = 32")
}

/// Run a Python oracle script from tests/oracles and parse its JSON output.
pub fn oracle(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles").join(script);
    let out = Command::new("python3").arg(&path).args(args).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "oracle {script} failed (missing packages? bash scripts/setup.sh --deps-only): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("oracle {script} printed no JSON: {e}"))
}

/// Run a Python oracle script on a JSON spec (written to a temp file) and parse its output.
pub fn json_oracle(script: &str, spec: &serde_json::Value) -> serde_json::Value {
    let path = std::env::temp_dir().join(format!("{script}-{}.json", std::process::id()));
    std::fs::write(&path, spec.to_string()).unwrap();
    let want = oracle(script, &[path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    want
}

/// The worker pids of a sweep's runs whose status says `running`.
pub fn running_workers(sweep: &Path) -> Vec<u32> {
    if !sweep.is_dir() {
        return Vec::new();
    }
    run_dirs(sweep)
        .iter()
        .filter(|r| r.join("status.json").is_file())
        .map(|r| status(r))
        .filter(|s| s["state"] == "running")
        .filter_map(|s| s["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// The run directories of a sweep dir (those with a config.toml), sorted.
pub fn run_dirs(sweep: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(sweep)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.toml").is_file())
        .collect();
    v.sort();
    v
}

/// A run's status.json.
pub fn status(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("status.json")).unwrap()).unwrap()
}

/// Path → (modified time, bytes) of every file under `dir` that `keep` accepts.
pub fn file_digests(
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
) -> std::collections::BTreeMap<std::path::PathBuf, (std::time::SystemTime, Vec<u8>)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && keep(e.path()))
        .map(|e| {
            let p = e.path().to_path_buf();
            (p.clone(), (std::fs::metadata(&p).unwrap().modified().unwrap(), std::fs::read(&p).unwrap()))
        })
        .collect()
}

/// Wait until a SIGKILLed process is gone (or a zombie: dead, not yet reaped).
pub fn wait_gone(pid: u32) {
    let t0 = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')) {
            return;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "process {pid} survived SIGKILL");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The subcommands `vqlab --help` lists (without `help`).
pub fn commands(dir: &Path) -> Vec<String> {
    stdout(&vqlab(dir, &["--help"]))
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, while the process has one thread: setting the environment is sound only then.
    vqlab::ops::tune_threads();
    let cli = vqlab::cli::Cli::parse();
    vqlab::app::init_logging(&cli);
    // A panic (a bug, or a library that panics on I/O errors, which vqlab catches) is one log
    // line naming where it happened, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!("internal panic at {at}: {what}");
    }));
    // A file-size limit (`ulimit -f`) makes a write fail with EFBIG, which names the file,
    // instead of killing the process with SIGXFSZ.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // A closed stdout (`vqlab plan BIG.toml | head -1`) ends a command that only prints the
    // way it ends any Unix filter: quietly, by the default SIGPIPE action (status 141), not
    // with a "failed printing to stdout" panic. The scheduler and the worker keep Rust's
    // ignored SIGPIPE, so a closed pipe never kills a sweep half-way.
    if cli.only_prints() {
        // SAFETY: restoring a signal's default disposition has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    vqlab::ops::tune_allocator();
    match vqlab::app::run(cli) {
        Ok(status) => ExitCode::from(status.code()),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(vqlab::error::exit_status_for(&err).code())
        }
    }
}

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vqlab::cli::Cli::parse();
    vqlab::app::init_logging(&cli);
    match vqlab::app::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(vqlab::error::exit_code_for(&err))
        }
    }
}

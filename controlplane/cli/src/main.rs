//! The `carmine` binary: parse, run on a small tokio runtime, print, exit with the error's code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = carmine_cli::Cli::parse(); // exits with code 2 and usage on bad arguments
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carmine: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(carmine_cli::run(cli)) {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`carmine ... | head`) is not an error worth reporting.
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let Some(text) = e.stdout() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            eprintln!("carmine: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

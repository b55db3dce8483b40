//! Test helper, not a tool: the child process of the crash-consistency test
//! (`tests/crash.rs`). It mounts the file device named by `CARMINE_CRASH_DEV` and streams the
//! transactions of round `CARMINE_CRASH_ROUND` into it until the test SIGKILLs it. A binary
//! rather than a `#[test]`, so that a normal test run does not count it as a passing test.

use std::path::Path;
use std::process::ExitCode;

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/crashload.rs"]
mod crashload;

fn main() -> ExitCode {
    let Some((path, round)) = crashload::child_request() else {
        eprintln!(
            "carmine-bdevstore-crash-child is started by the bdevstore crash test \
             ({} and {} unset)",
            crashload::ENV_DEV,
            crashload::ENV_ROUND
        );
        return ExitCode::from(2);
    };
    crashload::child_loop(common::open_dev(Path::new(&path)), round);
    ExitCode::SUCCESS
}

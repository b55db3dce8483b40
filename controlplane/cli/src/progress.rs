//! Progress bars for long CLI operations (`indicatif`: the maintained terminal progress
//! crate; it hides itself when stderr is not a terminal, so scripts and logs get no escape
//! codes). Progress goes to stderr, results to stdout.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` units named `unit` ("objects", "s"), on stderr when it is a terminal;
/// `None` when it is not (the caller then prints plain lines, or nothing).
pub fn bar(total: u64, unit: &str, prefix: &str) -> Option<ProgressBar> {
    let target = ProgressDrawTarget::stderr();
    if target.is_hidden() {
        return None;
    }
    let style = ProgressStyle::with_template(&format!(
        "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let pb = ProgressBar::with_draw_target(Some(total), target)
        .with_style(style)
        .with_prefix(prefix.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}

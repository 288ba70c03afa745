//! Progress of long operations on stderr: an `indicatif` spinner with the elapsed time when
//! stderr is a terminal, plain lines otherwise (logs and CI output stay one line per step,
//! with no control characters).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// One step in progress (such as a function waiting for its first ready replica).
pub(crate) struct Step {
    bar: Option<ProgressBar>,
    label: String,
}

impl Step {
    /// Starts a step: a spinner on a terminal, else `label ... ` on stderr, finished by
    /// [`Step::finish`] on the same line.
    pub(crate) fn start(label: impl Into<String>) -> Step {
        let label = label.into();
        if !std::io::stderr().is_terminal() {
            eprint!("{label} ... ");
            let _ = std::io::stderr().flush();
            return Step { bar: None, label };
        }
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(label.clone());
        bar.enable_steady_tick(Duration::from_millis(100));
        Step { bar: Some(bar), label }
    }

    /// Updates what the step is doing (shown on a terminal only).
    pub(crate) fn note(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}: {what}", self.label));
        }
    }

    /// Ends the step with its outcome (`ready in 12 ms`, `failed: ...`).
    pub(crate) fn finish(self, outcome: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(format!("{} {outcome}", self.label)),
            None => eprintln!("{outcome}"),
        }
    }
}

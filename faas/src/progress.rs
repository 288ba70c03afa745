//! Progress of long operations on stderr: an `indicatif` spinner with the elapsed time when
//! stderr is a terminal (a byte progress bar while an image pulls), plain lines otherwise
//! (logs and CI output stay one line per step, with no control characters).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use faas_core::PullProgress;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// One step in progress (such as a function waiting for its first ready replica).
pub(crate) struct Step {
    bar: Option<ProgressBar>,
    label: String,
    /// Whether the bar shows a pull's bytes (else the spinner).
    pulling: bool,
    /// Plain mode: whether lines were printed after `label ... ` (the outcome then goes on
    /// a line of its own, with the label again).
    broke: bool,
    plain: PlainPull,
}

impl Step {
    /// Starts a step: a spinner on a terminal, else `label ... ` on stderr, finished by
    /// [`Step::finish`] on the same line.
    pub(crate) fn start(label: impl Into<String>) -> Step {
        let label = label.into();
        let mut step =
            Step { bar: None, label, pulling: false, broke: false, plain: PlainPull::default() };
        if !std::io::stderr().is_terminal() {
            eprint!("{} ... ", step.label);
            let _ = std::io::stderr().flush();
            return step;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(spinner_style());
        bar.set_message(step.label.clone());
        bar.enable_steady_tick(Duration::from_millis(100));
        step.bar = Some(bar);
        step
    }

    /// Updates what the step is doing (shown on a terminal only).
    pub(crate) fn note(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}: {what}", self.label));
        }
    }

    /// Shows how far an image pull has got: the bar turns into a byte progress bar on a
    /// terminal; elsewhere a plain line when a layer finishes or another tenth of the bytes
    /// is in.
    pub(crate) fn pull(&mut self, p: &PullProgress) {
        match &self.bar {
            Some(bar) => {
                if !self.pulling {
                    bar.set_style(bytes_style());
                    self.pulling = true;
                }
                bar.set_length(p.total_bytes.max(1));
                bar.set_position(p.downloaded_bytes.min(p.total_bytes));
                bar.set_message(format!(
                    "{}: pulling {} ({}/{} layers)",
                    self.label, p.image, p.layers_done, p.layers
                ));
            }
            None => {
                if let Some(line) = self.plain.line(p) {
                    if !self.broke {
                        eprintln!();
                        self.broke = true;
                    }
                    eprintln!("  {line}");
                }
            }
        }
    }

    /// The pull is over: back to the spinner.
    pub(crate) fn pulled(&mut self) {
        if let (Some(bar), true) = (&self.bar, self.pulling) {
            bar.set_style(spinner_style());
            bar.set_message(self.label.clone());
            self.pulling = false;
        }
    }

    /// Ends the step with its outcome (`ready in 12 ms`, `failed: ...`).
    pub(crate) fn finish(self, outcome: &str) {
        match self.bar {
            Some(bar) => {
                bar.set_style(spinner_style());
                bar.finish_with_message(format!("{} {outcome}", self.label))
            }
            None if self.broke => eprintln!("{} {outcome}", self.label),
            None => eprintln!("{outcome}"),
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// When a pull is worth a plain line: its first report, each finished layer, each tenth
/// of the known bytes.
#[derive(Debug, Default)]
pub(crate) struct PlainPull {
    last: Option<(u32, u32, u64)>,
}

impl PlainPull {
    /// The line to print for `p`, if it says something new.
    pub(crate) fn line(&mut self, p: &PullProgress) -> Option<String> {
        let tenth = p.downloaded_bytes.saturating_mul(10).checked_div(p.total_bytes).unwrap_or(0);
        let key = (p.layers, p.layers_done, tenth);
        if self.last == Some(key) {
            return None;
        }
        self.last = Some(key);
        Some(format!(
            "pulling {}: {} of {} ({}/{} layers)",
            p.image,
            HumanBytes(p.downloaded_bytes),
            HumanBytes(p.total_bytes),
            p.layers_done,
            p.layers
        ))
    }
}

/// Runs `work` (a deploy) while asking `pull_status` every 250 ms how far the backend's
/// image pull for it has got, shown on `step` (started as `label` at the first report
/// when there is none).
pub(crate) async fn showing_pull<T, F, Fut>(
    step: &mut Option<Step>,
    label: &str,
    work: impl Future<Output = T>,
    pull_status: F,
) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<PullProgress>>,
{
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The status is asked within the select, so the work goes on while it is (a
        // backend's status can take a while) and is never held up by it.
        let report = async {
            tick.tick().await;
            pull_status().await
        };
        tokio::select! {
            biased;
            r = &mut work => {
                if let Some(s) = step.as_mut() {
                    s.pulled();
                }
                return r;
            }
            p = report => {
                if let Some(p) = p {
                    step.get_or_insert_with(|| Step::start(label)).pull(&p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(done: u64, total: u64, layers_done: u32) -> PullProgress {
        let mut p = PullProgress::new("127.0.0.1:5000/faas-rs/big:1");
        p.downloaded_bytes = done;
        p.total_bytes = total;
        p.layers = 3;
        p.layers_done = layers_done;
        p
    }

    /// Off a terminal a pull is a few plain lines with bytes and layers: one at the start,
    /// one per tenth of the bytes and per finished layer, none for reports that change
    /// nothing worth a line.
    #[test]
    fn plain_pull_lines_say_bytes_and_layers_without_repeating() {
        let mut plain = PlainPull::default();
        let first = plain.line(&progress(0, 0, 1)).expect("the first report");
        assert_eq!(first, "pulling 127.0.0.1:5000/faas-rs/big:1: 0 B of 0 B (1/3 layers)");
        assert!(plain.line(&progress(0, 0, 1)).is_none(), "nothing new");
        let l = plain.line(&progress(1 << 20, 10 << 20, 1)).expect("a tenth in");
        assert_eq!(l, "pulling 127.0.0.1:5000/faas-rs/big:1: 1.00 MiB of 10.00 MiB (1/3 layers)");
        assert!(plain.line(&progress((1 << 20) + 5000, 10 << 20, 1)).is_none(), "same tenth");
        assert!(plain.line(&progress((1 << 20) + 5000, 10 << 20, 2)).is_some(), "a layer done");
        let last = plain.line(&progress(10 << 20, 10 << 20, 3)).unwrap();
        assert!(last.ends_with("10.00 MiB of 10.00 MiB (3/3 layers)"), "{last}");
        assert!(!last.contains('\u{1b}'), "no control characters: {last:?}");
    }

    /// The deploy's result comes back; reports seen while it runs go to a step started
    /// at the first one (none without a pull).
    #[tokio::test(start_paused = true)]
    async fn showing_pull_polls_while_the_work_runs() {
        let polls = std::sync::atomic::AtomicU32::new(0);
        let mut step = None;
        let work = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            42
        };
        let r = showing_pull(&mut step, "Pulling", work, || {
            polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { None }
        })
        .await;
        assert_eq!(r, 42);
        assert!(step.is_none(), "no pull reported: no step");
        let n = polls.load(std::sync::atomic::Ordering::SeqCst);
        assert!((8..=9).contains(&n), "polled every 250 ms for 2 s: {n}");

        // A reported pull starts the step.
        let work = tokio::time::sleep(Duration::from_secs(1));
        showing_pull(&mut step, "Pulling", work, || async { Some(progress(5, 10, 1)) }).await;
        let step = step.expect("a step for the reported pull");
        // Shown: as the bar's bytes on a terminal, else as the last plain line.
        assert!(step.pulling || step.plain.last == Some((3, 1, 5)), "{:?}", step.plain.last);
        step.finish("done");
    }
}

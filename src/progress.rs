//! Progress of long command-line work on stderr: on a terminal, an indicatif spinner with the
//! count, rate and elapsed time — a bar with the ETA once the total is known (`set_of`: verify,
//! backup) — otherwise (a log, a pipe) a plain line every 5 s and at the end, so a cron job's
//! output stays readable.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub(crate) struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    pub(crate) fn new(what: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}: {pos} ({per_sec}, {elapsed})")
                    .expect("a valid template"),
            );
            b.set_message(what);
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            what,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub(crate) fn set(&mut self, n: u64) {
        match &self.bar {
            Some(b) => b.set_position(n),
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                eprintln!("{}: {n} ({:.0}/s)", self.what, self.rate(n));
            }
            None => {}
        }
    }

    /// `n` done of `total`: a bar with the ETA from the first call on.
    pub(crate) fn set_of(&mut self, n: u64, total: u64) {
        match &self.bar {
            Some(b) => {
                if b.length() != Some(total) {
                    b.set_length(total);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})",
                        )
                        .expect("a valid template"),
                    );
                }
                b.set_position(n);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                let rate = self.rate(n);
                let eta = total.saturating_sub(n) as f64 / rate.max(1e-3);
                eprintln!(
                    "{}: {n} of {total} ({rate:.0}/s, ETA {eta:.0} s)",
                    self.what
                );
            }
            None => {}
        }
    }

    /// Ends work that had no count to show: its time.
    pub(crate) fn finish_plain(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!(
            "{}: done in {:.1} s",
            self.what,
            self.started.elapsed().as_secs_f64()
        );
    }

    pub(crate) fn finish(self, n: u64) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!(
            "{}: {n} in {:.1} s ({:.0}/s)",
            self.what,
            self.started.elapsed().as_secs_f64(),
            self.rate(n)
        );
    }

    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

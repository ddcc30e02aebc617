//! The console report of a run: one line per finished model, seed or test (status, kind,
//! relation, rows, time), a progress bar while stdout is a terminal, and a summary with every
//! error and skip spelled out at the end, where the reader looks first.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::runner::{Observer, RunReport, Status, UnitResult};

/// Prints progress to stdout.
pub struct Console {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
}

impl Console {
    /// A console report; the progress bar shows only when stdout is a terminal (so logs
    /// and pipes get plain lines).
    pub fn new() -> Console {
        Console {
            bar: Mutex::new(None),
            terminal: std::io::stdout().is_terminal(),
        }
    }

    fn line(&self, text: String) {
        match self.bar.lock().ok().as_ref().and_then(|b| b.as_ref()) {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// One report line for a finished unit.
pub fn result_line(r: &UnitResult) -> String {
    let what = match &r.relation {
        Some(rel) => format!("{} {} {rel}", r.kind, r.name),
        None => format!("{} {}", r.kind, r.name),
    };
    let detail = match (r.status, r.rows) {
        (Status::Skipped, _) => String::new(),
        (Status::Pass | Status::Fail | Status::Warn, Some(1)) => "1 failure".to_string(),
        (Status::Pass | Status::Fail | Status::Warn, Some(n)) => format!("{n} failures"),
        (_, Some(n)) => format!("{n} rows"),
        (_, None) => String::new(),
    };
    let time = if r.status == Status::Skipped {
        String::new()
    } else {
        secs(r.duration)
    };
    format!("{:<5} {what:<60} {detail:>14} {time:>7}", r.status.label())
}

impl Observer for Console {
    fn begin(&self, total: usize, target: &str) {
        println!("Running {total} nodes against {target}");
        if self.terminal && total > 0 {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {elapsed} {msg}")
            {
                bar.set_style(style);
            }
            if let Ok(mut b) = self.bar.lock() {
                *b = Some(bar);
            }
        }
    }

    fn started(&self, name: &str) {
        if let Some(bar) = self.bar.lock().ok().as_ref().and_then(|b| b.as_ref()) {
            bar.set_message(name.to_string());
        }
    }

    fn finished(&self, r: &UnitResult) {
        self.line(result_line(r));
        if let Some(bar) = self.bar.lock().ok().as_ref().and_then(|b| b.as_ref()) {
            bar.inc(1);
        }
    }
}

impl Console {
    /// Clears the bar and prints the summary: counts, then every error, failure and skip.
    pub fn summary(&self, report: &RunReport) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(bar) = b.take()
        {
            bar.finish_and_clear();
        }
        print!("{}", summary_text(report));
    }
}

/// The summary as text.
pub fn summary_text(report: &RunReport) -> String {
    let mut out = String::new();
    let problems: Vec<&UnitResult> = report
        .results
        .iter()
        .filter(|r| r.status != Status::Success && r.status != Status::Pass)
        .collect();
    if !problems.is_empty() {
        out.push('\n');
        for r in &problems {
            let msg = r.message.as_deref().unwrap_or("");
            match r.status {
                Status::Skipped => out.push_str(&format!("SKIP  {}: {msg}\n", r.name)),
                _ => out.push_str(&format!("{:<5} {}: {msg}\n", r.status.label(), r.name)),
            }
        }
    }
    let mut parts = Vec::new();
    for (s, word) in [
        (Status::Success, "ok"),
        (Status::Pass, "passed"),
        (Status::Warn, "warned"),
        (Status::Fail, "failed"),
        (Status::Error, "errors"),
        (Status::Skipped, "skipped"),
    ] {
        let n = report.count(s);
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    if parts.is_empty() {
        parts.push("nothing to do".into());
    }
    out.push_str(&format!(
        "\n{}: {} in {}\n",
        if report.success() {
            "Done"
        } else {
            "Finished with problems"
        },
        parts.join(", "),
        secs(report.elapsed)
    ));
    out
}

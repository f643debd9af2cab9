//! The demo without the CLI's progress bars: `cargo run --release -p
//! semla-experiments --example demo_plain -- [--quick] [OUT_DIR]`.

use semla_experiments::demo::{DemoConfig, run_demo};
use semla_experiments::progress::Progress;

struct Lines {
    label: String,
    started: std::time::Instant,
    message: String,
}

impl Progress for Lines {
    fn begin(&mut self, label: &str, _total: u64) {
        self.label = label.to_string();
        self.started = std::time::Instant::now();
        self.message.clear();
    }
    fn set(&mut self, _done: u64) {}
    fn message(&mut self, text: &str) {
        self.message = text.to_string();
    }
    fn end(&mut self) {
        eprintln!(
            "{:<50} {:>6.2} s  {}",
            self.label,
            self.started.elapsed().as_secs_f64(),
            self.message
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "semla-demo-out".into());
    let config = if quick {
        DemoConfig::quick()
    } else {
        DemoConfig::full()
    };
    let mut progress = Lines {
        label: String::new(),
        started: std::time::Instant::now(),
        message: String::new(),
    };
    let outcome = run_demo(&config, std::path::Path::new(&out), &mut progress)?;
    println!("{}", outcome.table.render_text());
    if let Some(c) = outcome.table.gap_closure("semla") {
        println!(
            "SemLA closes {:.0} % of the zero-shot to oracle gap",
            100.0 * c
        );
    }
    println!(
        "{:.1} s; report {}",
        outcome.seconds,
        outcome.report.display()
    );
    Ok(())
}

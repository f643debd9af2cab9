//! One module per command family. Each exposes a clap `Args`/`Subcommand`
//! type and a `run(args, &Context) -> anyhow::Result<()>`.

pub mod adapter;
pub mod backbone;
pub mod bench;
pub mod clip;
pub mod common;
pub mod csi;
pub mod data;
pub mod demo;
pub mod eval;
pub mod experiment;
pub mod library;
pub mod metrics;
pub mod model;
pub mod sam;
pub mod segment;
pub mod serve;
pub mod train;

/// Options shared by every command.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// `--json`: print machine-readable JSON on stdout.
    pub json: bool,
}

impl Context {
    /// Prints `value` as pretty JSON on stdout.
    pub fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

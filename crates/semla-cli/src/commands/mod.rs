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
#[derive(Debug)]
pub struct Context {
    /// `--json`: print machine-readable JSON on stdout.
    pub json: bool,
    /// `--device`: where models run.
    pub device_spec: semla_models::device::DeviceSpec,
    /// The device, opened on first use (commands without a model never open one).
    device: std::sync::OnceLock<candle_core::Device>,
}

impl Context {
    /// The options of a command line.
    pub fn new(json: bool, device_spec: semla_models::device::DeviceSpec) -> Self {
        Self {
            json,
            device_spec,
            device: std::sync::OnceLock::new(),
        }
    }

    /// The device models run on (`--device`), opened once: every model and
    /// tensor of one command lives on the same device.
    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        if let Some(device) = self.device.get() {
            return Ok(device.clone());
        }
        let opened = self.device_spec.open()?;
        tracing::info!("running on {}", semla_models::device::device_name(&opened));
        Ok(self.device.get_or_init(|| opened).clone())
    }

    /// Prints `value` as pretty JSON on stdout.
    pub fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

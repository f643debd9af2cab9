//! The tiny SemLA world the service tests run on: the Python package's
//! committed fixtures (a random tiny segmenter, a library of three adapters
//! with `style` prototypes, two photos).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers stop loudly

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use semla_models::{Segmenter, load_segmenter};
use semla_pipeline::SemlaSettings;
use semla_serve::{AppState, LoadSpec, ServeConfig, Started};

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-py/tests/fixtures")
}

/// The PNG bytes of a fixture photo (`fog` or `night`).
pub fn photo_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(format!("{name}.png"))).unwrap()
}

/// What the fixtures serve, with the library at `library`.
pub fn spec_with_library(library: &Path) -> LoadSpec {
    let device = Device::Cpu;
    let model_dir = fixtures().join("model");
    let model: Arc<dyn Segmenter> = Arc::from(load_segmenter(&model_dir, &device).unwrap());
    LoadSpec {
        model,
        model_fingerprint: "test-model".into(),
        model_name: model_dir.display().to_string(),
        library: library.to_path_buf(),
        sources: None,
        embedder: None,
        settings: SemlaSettings::default(),
        device,
    }
}

/// What the fixtures serve.
pub fn spec() -> LoadSpec {
    spec_with_library(&fixtures().join("library"))
}

/// Starts a server's state and waits for its first load (panics if it fails).
pub async fn started(config: ServeConfig, spec: LoadSpec) -> Started {
    let started = semla_serve::start(config, spec).unwrap();
    wait_loaded(&started.state).await;
    started
}

/// Waits until the state serves a library (at most 60 s).
pub async fn wait_loaded(state: &AppState) {
    let begun = Instant::now();
    while semla_serve::engine::current(&state.current).is_none() {
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "not loaded after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Decodes a grey label PNG to (width, height, values).
pub fn decode_labels(png_bytes: &[u8]) -> (u32, u32, Vec<u16>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let values = match info.bit_depth {
        png::BitDepth::Eight => buf[..info.buffer_size()]
            .iter()
            .map(|&v| u16::from(v))
            .collect(),
        png::BitDepth::Sixteen => buf[..info.buffer_size()]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
        other => panic!("unexpected depth {other:?}"),
    };
    (info.width, info.height, values)
}

/// Base64 decoding (standard alphabet).
pub fn unbase64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

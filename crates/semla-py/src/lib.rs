//! # semla-py
//!
//! `import semla`: the Python package over semla's Rust core. The extension
//! module `semla._semla` defined here holds the classes; the package's Python
//! half (`python/semla/`) re-exports them and defines the exception hierarchy
//! and the `Retrieval` record.
//!
//! - [`adapters`] holds `LoraConfig`, `Adapter`, `AdapterLibrary` and
//!   `add_weighted_adapter`;
//! - [`segment`] holds `Segmenter`, `SemLA`, `Segmentation`, and image and
//!   label-map files;
//! - [`metrics`] holds `ConfusionMatrix`;
//! - [`arrays`] checks numpy inputs and makes the outputs;
//! - [`runtime`] runs every long call without the GIL, interruptible, fork-safe;
//! - [`errors`] turns Rust errors into `semla.SemlaError` subclasses.

use pyo3::prelude::*;

pub mod adapters;
pub mod arrays;
pub mod errors;
pub mod metrics;
pub mod runtime;
pub mod segment;

/// The extension module `semla._semla`.
#[pymodule]
fn _semla(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Process-wide: glibc keeps freed tensor buffers for reuse instead of
    // returning and re-faulting them (semla_core::alloc; the README says so).
    semla_core::alloc::keep_freed_memory();
    // candle's element-wise pool is made now, while `__init__.py` holds
    // CANDLE_NUM_THREADS (see `runtime`).
    m.add(
        "_elementwise_threads",
        candle_core::utils::barrier_pool().n_workers() + 1,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<adapters::LoraConfig>()?;
    m.add_class::<adapters::Adapter>()?;
    m.add_class::<adapters::AdapterLibrary>()?;
    m.add_function(wrap_pyfunction!(adapters::add_weighted_adapter, m)?)?;
    m.add_class::<segment::Segmenter>()?;
    m.add_class::<segment::SemLA>()?;
    m.add_class::<segment::Segmentation>()?;
    m.add_function(wrap_pyfunction!(segment::read_image, m)?)?;
    m.add_function(wrap_pyfunction!(segment::read_label_map, m)?)?;
    m.add_function(wrap_pyfunction!(segment::write_image, m)?)?;
    m.add_class::<metrics::ConfusionMatrix>()?;
    Ok(())
}

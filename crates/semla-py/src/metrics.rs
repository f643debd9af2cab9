//! `semla.ConfusionMatrix`: SemLA's metric (mIoU, accuracies) over label maps.

use pyo3::prelude::*;
use semla_metrics::{ConfusionMatrix as RustMatrix, Definition};

use crate::arrays::{labels_arg, shape_error, to_numpy};
use crate::errors::{Failure, Kind};

/// A `K x K` confusion matrix of pixel counts, `[ground truth][prediction]`.
/// Ground-truth pixels equal to `ignore` are skipped (None: none are).
#[pyclass(module = "semla")]
pub struct ConfusionMatrix {
    inner: RustMatrix,
    ignore: Option<u16>,
}

#[pymethods]
impl ConfusionMatrix {
    #[new]
    #[pyo3(signature = (num_classes, ignore=Some(255)))]
    fn new(num_classes: usize, ignore: Option<u16>) -> PyResult<Self> {
        if num_classes == 0 {
            return Err(shape_error("num_classes must be at least 1"));
        }
        semla_core::limits::check_classes(num_classes as u64, "the confusion matrix")
            .map_err(shape_error)?;
        Ok(Self {
            inner: RustMatrix::new(num_classes),
            ignore,
        })
    }

    /// Number of classes `K`.
    #[getter]
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    /// The ignore value of the ground truth.
    #[getter]
    fn ignore(&self) -> Option<u16> {
        self.ignore
    }

    /// Adds one image: `prediction` and `ground_truth` are integer label maps
    /// of the same shape. Ground-truth values `>= K` other than `ignore` are
    /// skipped and counted; a prediction value `>= K` is a `semla.ShapeError`
    /// and leaves the matrix unchanged. Returns what was counted, as a dict.
    fn update<'py>(
        &mut self,
        py: Python<'py>,
        prediction: &Bound<'py, PyAny>,
        ground_truth: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (pred, pred_shape) = labels_arg(prediction, "prediction")?;
        let (gt, gt_shape) = labels_arg(ground_truth, "ground_truth")?;
        if pred_shape != gt_shape {
            return Err(shape_error(format!(
                "prediction of shape {pred_shape:?} and ground truth of shape {gt_shape:?}"
            )));
        }
        let report = self
            .inner
            .accumulate(&pred, &gt, self.ignore)
            .map_err(Failure::from)?;
        json_value(py, &report)
    }

    /// Adds the counts of `other` (same number of classes).
    fn merge(&mut self, other: PyRef<'_, ConfusionMatrix>) -> PyResult<()> {
        self.inner.merge(&other.inner).map_err(Failure::from)?;
        Ok(())
    }

    /// The counts, `numpy.uint64 [K, K]`.
    #[getter]
    fn matrix<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let k = self.inner.num_classes();
        let mut counts = Vec::with_capacity(k * k);
        for gt in 0..k {
            for pred in 0..k {
                counts.push(self.inner.count(gt, pred));
            }
        }
        to_numpy(py, counts, &[k, k])
    }

    /// mIoU, pixel and mean accuracy, frequency-weighted IoU and per-class
    /// scores (fractions in [0, 1]; None where undefined), as a dict.
    /// `definition`: `cityscapes` (a class predicted but absent counts with
    /// IoU 0) or `detectron2` (classes absent from the ground truth are left out).
    #[pyo3(signature = (definition="cityscapes"))]
    fn scores<'py>(&self, py: Python<'py>, definition: &str) -> PyResult<Bound<'py, PyAny>> {
        let definition: Definition = definition
            .parse()
            .map_err(|e: String| Failure::new(Kind::Semla, e))?;
        json_value(py, &self.inner.scores(definition))
    }

    fn __repr__(&self) -> String {
        format!(
            "ConfusionMatrix(num_classes={}, ignore={:?})",
            self.inner.num_classes(),
            self.ignore
        )
    }
}

/// A serialisable value as the Python object `json.loads` makes of it.
fn json_value<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text =
        serde_json::to_string(value).map_err(|e| Failure::new(Kind::Semla, e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

//! numpy in and out: inputs checked for shape, dtype and contiguity with a
//! `semla.ShapeError` that states what was expected; outputs as new arrays.

use std::path::PathBuf;

use image::RgbImage;
use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::errors::{Failure, Kind, Outcome};

/// An image argument: a photo in memory, or a file to decode (off the GIL).
pub enum ImageArg {
    /// An RGB photo copied out of a numpy array.
    Pixels(RgbImage),
    /// A PNG or JPEG file.
    File(PathBuf),
}

impl ImageArg {
    /// The photo, decoding the file if it is one.
    pub fn load(self) -> Outcome<RgbImage> {
        match self {
            Self::Pixels(photo) => Ok(photo),
            Self::File(path) => {
                semla_data::image_io::read_rgb(&path).map_err(|e| Failure::of(Kind::Image, &e))
            }
        }
    }
}

fn describe(array: &Bound<'_, PyUntypedArray>) -> String {
    format!(
        "an array of shape {:?} and dtype {}",
        array.shape(),
        array
            .dtype()
            .str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into())
    )
}

/// Reads an image argument: a `numpy.uint8` array `[H, W, 3]` (RGB,
/// C-contiguous), or a path (`str` or `os.PathLike`) of a PNG or JPEG.
pub fn image_arg(obj: &Bound<'_, PyAny>) -> PyResult<ImageArg> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        let shape = array.shape().to_vec();
        let Ok(typed) = array.cast::<PyArrayDyn<u8>>() else {
            return Err(shape_error(format!(
                "expected an image as a uint8 array [H, W, 3] (RGB), got {}",
                describe(array)
            )));
        };
        let [height, width, 3] = shape[..] else {
            return Err(shape_error(format!(
                "expected an image as a uint8 array [H, W, 3] (RGB), got {}",
                describe(array)
            )));
        };
        if !array.is_c_contiguous() {
            return Err(shape_error(
                "the image array is not C-contiguous (a view such as a[:, ::-1]); pass numpy.ascontiguousarray(image)",
            ));
        }
        if height == 0 || width == 0 {
            return Err(shape_error(format!(
                "the image is empty ({height}x{width})"
            )));
        }
        semla_core::limits::check_pixels(height as u64, width as u64, "the image")
            .map_err(shape_error)?;
        let (Ok(h), Ok(w)) = (u32::try_from(height), u32::try_from(width)) else {
            return Err(shape_error(format!(
                "the image is too large ({height}x{width})"
            )));
        };
        let readonly = typed
            .try_readonly()
            .map_err(|e| shape_error(format!("the image array cannot be read: {e}")))?;
        let pixels = readonly
            .as_slice()
            .map_err(|e| shape_error(format!("the image array cannot be read: {e}")))?
            .to_vec();
        let photo = RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| shape_error("the image array does not hold H x W x 3 values"))?;
        return Ok(ImageArg::Pixels(photo));
    }
    match obj.extract::<PathBuf>() {
        Ok(path) => Ok(ImageArg::File(path)),
        Err(_) => Err(shape_error(format!(
            "expected an image: a uint8 array [H, W, 3] or the path of a PNG/JPEG file, got {}",
            type_name(obj)
        ))),
    }
}

/// A 1-D float vector (an embedding): float32 or float64, shape `[D]` or `[1, D]`.
pub fn vector_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    let np = obj.py().import("numpy")?;
    let array = np.call_method1("asarray", (obj,))?;
    let array = array
        .cast::<PyUntypedArray>()
        .map_err(|_| shape_error(format!("{what}: expected an array")))?;
    let shape = array.shape().to_vec();
    let ok_shape = matches!(shape[..], [_] | [1, _]);
    if !ok_shape {
        return Err(shape_error(format!(
            "{what}: expected a vector [D] or [1, D], got {}",
            describe(array)
        )));
    }
    let as_f32 = np.call_method1("ascontiguousarray", (array, "float32"))?;
    let typed = as_f32.cast::<PyArrayDyn<f32>>().map_err(|_| {
        shape_error(format!(
            "{what}: expected float values, got {}",
            describe(array)
        ))
    })?;
    let readonly = typed.readonly();
    Ok(readonly
        .as_slice()
        .map_err(|e| shape_error(format!("{what}: {e}")))?
        .to_vec())
}

/// A label map argument: an integer array of any shape (values `0..65535`),
/// flattened row-major, and its shape.
pub fn labels_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<u16>, Vec<usize>)> {
    let array = obj.cast::<PyUntypedArray>().map_err(|_| {
        shape_error(format!(
            "{what}: expected a numpy integer array, got {}",
            type_name(obj)
        ))
    })?;
    let shape = array.shape().to_vec();
    let kind = array.dtype().kind();
    if kind != b'u' && kind != b'i' && kind != b'b' {
        return Err(shape_error(format!(
            "{what}: expected integer labels, got {}",
            describe(array)
        )));
    }
    let np = obj.py().import("numpy")?;
    let wide = np.call_method1("ascontiguousarray", (array, "int64"))?;
    let wide = wide
        .cast::<PyArrayDyn<i64>>()
        .map_err(|_| shape_error(format!("{what}: cannot read {}", describe(array))))?;
    let readonly = wide.readonly();
    let values = readonly
        .as_slice()
        .map_err(|e| shape_error(format!("{what}: {e}")))?;
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        let Ok(v) = u16::try_from(v) else {
            return Err(shape_error(format!(
                "{what}: value {v} at flat index {i} is not a label (0..=65535)"
            )));
        };
        out.push(v);
    }
    Ok((out, shape))
}

/// A new numpy array of `shape` holding `values` (row-major).
pub fn to_numpy<'py, T: numpy::Element>(
    py: Python<'py>,
    values: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let flat = PyArray1::from_vec(py, values);
    Ok(flat.reshape(shape.to_vec())?.into_any())
}

/// A `semla.ShapeError` with `message`.
pub fn shape_error(message: impl Into<String>) -> PyErr {
    Failure::new(Kind::Shape, message).into()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an object".into())
}

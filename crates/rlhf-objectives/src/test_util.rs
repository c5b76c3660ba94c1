//! Helpers for the unit tests: the test devices and small conversions.

use burn::prelude::*;

/// The plain CPU test device.
pub fn device() -> Device {
    Device::flex()
}

/// The CPU test device with autodiff, for gradient tests.
pub fn grad_device() -> Device {
    Device::flex().autodiff()
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("tensor to Vec<f32>")
}

pub fn scalar(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

pub fn tensor1(device: &Device, values: &[f32]) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

pub fn tensor2(device: &Device, values: &[f32], shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// Asserts `|a_i - b_i| <= tol` element by element.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "length mismatch: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol,
            "index {i}: {x} vs {y} (tol {tol}); {a:?} vs {b:?}"
        );
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `-log sigmoid(x)` in f64.
pub fn nls(x: f64) -> f64 {
    (1.0 + (-x).exp()).ln()
}

//! Matrix products of host values with the `gemm` crate, the call burn-flex's `matmul` makes.
//!
//! The training convolution ([`super::train_conv`]) keeps its im2col matrices and gradients on
//! the host. Handing each product to the backend's `matmul` costs, per product, the operands'
//! conversion into tensors and, on burn-flex, an output buffer that is zeroed and then copied
//! into an aligned allocation before `gemm` overwrites it (docs/decisions.md, "Training
//! convolutions on host buffers"). [`matmul`] makes the same `gemm::gemm` call as burn-flex 0.21
//! (same sizes, strides, scaling and parallelism), so the products are the same bit for bit.

use gemm::Parallelism;

/// A read-only matrix of host values: `rows × cols` with the given strides between rows and
/// between columns (a transposed view swaps them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// `values` as a row-major `rows × cols` matrix.
    ///
    /// # Panics
    /// If `values` does not hold exactly `rows · cols` values.
    pub fn row_major(values: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols, "a {rows}x{cols} matrix of {} values", values.len());
        Self { values, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transposed matrix, a view of the same values.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// Products of fewer multiply-adds than this run on the calling thread: burn-flex 0.21's
/// threshold, so that `gemm` splits a product exactly where burn-flex's `matmul` would.
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// Where a product's values go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Row after row: the product itself, row-major.
    RowMajor,
    /// Column after column: the product's transpose, row-major.
    ColumnMajor,
}

/// `lhs · rhs`, a `lhs.rows × rhs.cols` matrix, in `layout`.
///
/// Row-major it is burn-flex's `matmul` for the same operands with the same strides. `gemm`
/// computes a row-major product as its transpose (`rhsᵀ · lhsᵀ`, its kernels favour columns),
/// and packs that product's left operand unless its rows are contiguous; a product written
/// column-major is computed as it stands. Either way every value sums its `k` products in the
/// same order, in blocks of a size that depends on `k` and the kernel's tile only, so the two
/// layouts hold the same values bit for bit. The weight gradient `dY · colsᵀ` of the training
/// convolution is written column-major: row-major, `gemm` packed the whole im2col matrix
/// (docs/decisions.md, "Training convolutions on host buffers").
///
/// # Panics
/// If the inner sizes differ.
#[allow(unsafe_code)] // docs/decisions.md, "Training convolutions on host buffers"
pub(crate) fn matmul(lhs: Matrix, rhs: Matrix, layout: Layout) -> Vec<f32> {
    let (m, n) = product_size(lhs, rhs);
    let (row_stride, col_stride) = match layout {
        Layout::RowMajor => (n, 1),
        Layout::ColumnMajor => (1, m),
    };
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: `out` has room for the `m · n` results, and either layout's strides address each
    // of them once inside it; `product` writes every one (its contract), after which
    // they are initialised and `set_len` exposes them.
    unsafe {
        product(lhs, rhs, out.as_mut_ptr(), row_stride, col_stride);
        out.set_len(m * n);
    }
    out
}

/// `lhs · rhs` written row-major into `out`, its rows `row_stride` values apart: row `i` of the
/// product is `out[i · row_stride..][..rhs.cols]`, and the values between rows are left as they
/// are. A tile of columns of a larger matrix (a convolution's output positions) is written in
/// place this way. The values are [`matmul`]'s, bit for bit.
///
/// # Panics
/// If the inner sizes differ, if `row_stride` is less than the product's columns, or if `out`
/// does not reach the last value.
#[allow(unsafe_code)] // docs/decisions.md, "Training convolutions on host buffers"
pub(crate) fn matmul_into(lhs: Matrix, rhs: Matrix, out: &mut [f32], row_stride: usize) {
    let (m, n) = product_size(lhs, rhs);
    if m == 0 || n == 0 {
        return;
    }
    assert!(row_stride >= n, "rows of {n} values {row_stride} apart overlap");
    let end = (m - 1) * row_stride + n;
    assert!(out.len() >= end, "a {m}x{n} product {row_stride} values a row needs {end} values, not {}", out.len());
    // SAFETY: the assertions above put every `(i, j)` at `i · row_stride + j < end <= out.len()`,
    // each at its own place (`row_stride >= n`), inside `out`, which is borrowed mutably.
    unsafe { product(lhs, rhs, out.as_mut_ptr(), row_stride, 1) }
}

/// The product's `(rows, columns)`.
///
/// # Panics
/// If the inner sizes differ.
fn product_size(lhs: Matrix, rhs: Matrix) -> (usize, usize) {
    assert_eq!(lhs.cols, rhs.rows, "matmul of {}x{} by {}x{}", lhs.rows, lhs.cols, rhs.rows, rhs.cols);
    (lhs.rows, rhs.cols)
}

/// `lhs · rhs` written at `dst`, value `(i, j)` at `i · row_stride + j · col_stride`: the one
/// `gemm::gemm` call, with burn-flex 0.21's scaling and parallelism.
///
/// # Safety
/// The inner sizes agree, and for every `(i, j)` of the product `dst + i · row_stride + j ·
/// col_stride` is valid for writes and no other `(i, j)` lands there. With `read_dst` false
/// `gemm` writes every value without reading the destination; an empty inner size writes zeros.
#[allow(unsafe_code)]
unsafe fn product(lhs: Matrix, rhs: Matrix, dst: *mut f32, row_stride: usize, col_stride: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: the caller's contract
                unsafe { dst.add(i * row_stride + j * col_stride).write(0.0) };
            }
        }
        return;
    }
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: `row_major` sized each operand's values, and `t` only swaps sizes with strides, so
    // every element `(i, j)` of an operand, at `i · row_stride + j · col_stride`, lies inside its
    // slice; the destination is the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            col_stride as isize,
            row_stride as isize,
            false,
            lhs.values.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    fn values(t: Tensor<Flex, 2>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn equals_flex_matmul_bit_for_bit() {
        let device = Default::default();
        // small and above the parallel threshold; sizes that are not multiples of the kernels' tiles
        for [m, k, n] in [[3, 5, 7], [16, 144, 6272], [64, 576, 1024], [37, 1, 9], [200, 300, 150]] {
            let a = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
            let bt = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
            let at = Tensor::<Flex, 2>::random([k, m], Distribution::Normal(0.0, 1.0), &device);
            let (va, vb, vbt, vat) = (values(a.clone()), values(b.clone()), values(bt.clone()), values(at.clone()));
            let label = format!("{m}x{k} by {k}x{n}");
            let expected = values(a.clone().matmul(b.clone()));
            assert_eq!(
                matmul(Matrix::row_major(&va, m, k), Matrix::row_major(&vb, k, n), Layout::RowMajor),
                expected,
                "{label}"
            );
            // transposed operands, as the convolution's backward pass takes them
            let expected = values(a.matmul(bt.transpose()));
            assert_eq!(
                matmul(Matrix::row_major(&va, m, k), Matrix::row_major(&vbt, n, k).t(), Layout::RowMajor),
                expected,
                "{label}, rhs^T"
            );
            let expected = values(at.transpose().matmul(b));
            assert_eq!(
                matmul(Matrix::row_major(&vat, k, m).t(), Matrix::row_major(&vb, k, n), Layout::RowMajor),
                expected,
                "{label}, lhs^T"
            );
        }
    }

    #[test]
    fn column_major_is_the_transposed_product_bit_for_bit() {
        let device = Default::default();
        // the weight gradients of the main job's convolutions (O, K, n·L: the 3x3/2 stem, a 3x3 of
        // each stage), and sizes that are not multiples of the kernels' tiles
        for [m, k, n] in [[16, 6272, 9], [16, 6272, 144], [32, 1568, 288], [64, 512, 576], [7, 301, 13], [3, 5, 2]] {
            let a = values(Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device));
            let bt = values(Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &device));
            let (lhs, rhs) = (Matrix::row_major(&a, m, k), Matrix::row_major(&bt, n, k).t());
            let row_major = matmul(lhs, rhs, Layout::RowMajor);
            let column_major = matmul(lhs, rhs, Layout::ColumnMajor);
            let transposed: Vec<f32> = (0..m * n).map(|i| column_major[(i % n) * m + i / n]).collect();
            assert_eq!(transposed, row_major, "{m}x{k} by {k}x{n}");
        }
    }

    #[test]
    fn empty_inner_size_gives_zeros() {
        let (lhs, rhs) = (Matrix::row_major(&[], 2, 0), Matrix::row_major(&[], 0, 3));
        assert_eq!(matmul(lhs, rhs, Layout::RowMajor), vec![0.0; 6]);
    }

    #[test]
    #[should_panic = "matmul of 2x3 by 2x2"]
    fn mismatched_sizes_panic() {
        let _ = matmul(Matrix::row_major(&[0.0; 6], 2, 3), Matrix::row_major(&[0.0; 4], 2, 2), Layout::RowMajor);
    }
}

//! A batch split into groups of samples that share a gate pattern: the data layout of sparse
//! execution (DESIGN §7).
//!
//! Before each block the samples are regrouped by the block's gate pattern (which paths are on),
//! each group as one contiguous tensor. A group then runs exactly its paths on whole tensors, so
//! every elementwise op works in place on a buffer it owns and no path output is scattered back
//! into a larger batch. Regrouping is the only copy per block (none when the groups do not
//! change, and never at batch size 1); the rows go back to the caller's order once, after the
//! classifier.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::backend::map_branches;

/// Which paths of a block are on for a sample: bit `i` is path `i`.
pub type PathPattern = u64;

/// Most paths a block may have in sparse execution (bits of a [`PathPattern`]).
pub const MAX_SPARSE_PATHS: usize = PathPattern::BITS as usize;

/// Rows of a batch that travel together.
#[derive(Debug, Clone)]
pub struct SampleGroup<B: Backend> {
    /// The rows: row `k` is sample `samples[k]` of the caller's batch.
    pub x: Tensor<B, 4>,
    /// Caller indices of the rows.
    pub samples: Vec<usize>,
}

/// A batch held as groups of rows (see the module documentation).
#[derive(Debug, Clone)]
pub struct GroupedBatch<B: Backend> {
    batch_size: usize,
    groups: Vec<SampleGroup<B>>,
}

/// `out[k] = x[order[k]]` along the first dimension, as one `[rows, features]` gather.
pub fn reorder_rows<B: Backend, const D: usize>(x: Tensor<B, D>, order: &[usize]) -> Tensor<B, D> {
    let dims = x.dims();
    let n = order.len();
    let features: usize = dims[1..].iter().product();
    let index = order.iter().map(|&b| b as i64).collect::<Vec<_>>();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &x.device());
    let mut out_dims = dims;
    out_dims[0] = n;
    x.reshape([dims[0], features]).select(0, index).reshape(out_dims)
}

/// The tensors one after another along the first dimension; a single tensor is passed through
/// (a `cat` of one copies it on GPU backends).
fn cat_rows<B: Backend, const D: usize>(mut parts: Vec<Tensor<B, D>>) -> Tensor<B, D> {
    match parts.len() {
        1 => parts.pop().expect("one part"),
        _ => Tensor::cat(parts, 0),
    }
}

/// The inverse of a reordering: `inverse(order)[order[k]] = k`.
pub fn inverse_order(order: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; order.len()];
    for (k, &b) in order.iter().enumerate() {
        inv[b] = k;
    }
    inv
}

/// Reads `[batch_size, num_paths]` gates back to the host (one device sync) as one pattern per
/// sample. A gate counts as on when it is above 0.5.
///
/// # Panics
/// If there are more than [`MAX_SPARSE_PATHS`] paths.
pub fn gate_patterns<B: Backend>(gates: &Tensor<B, 2>) -> Vec<PathPattern> {
    let [batch_size, num_paths] = gates.dims();
    let values = gates.to_data().convert::<f32>().to_vec::<f32>().expect("gates convert to f32");
    patterns_from_host(&values, batch_size, num_paths)
}

/// One pattern per sample from row-major `[batch_size, num_paths]` gate values.
///
/// # Panics
/// If `values` does not hold `batch_size * num_paths` values or there are more than
/// [`MAX_SPARSE_PATHS`] paths.
pub fn patterns_from_host(values: &[f32], batch_size: usize, num_paths: usize) -> Vec<PathPattern> {
    assert_eq!(
        values.len(),
        batch_size * num_paths,
        "gate values: {} values for batch_size={batch_size}, num_paths={num_paths}",
        values.len()
    );
    assert!(
        num_paths <= MAX_SPARSE_PATHS,
        "sparse execution supports at most {MAX_SPARSE_PATHS} paths per block, got num_paths={num_paths}"
    );
    (0..batch_size)
        .map(|b| (0..num_paths).filter(|&i| values[b * num_paths + i] > 0.5).fold(0, |acc, i| acc | (1 << i)))
        .collect()
}

impl<B: Backend> GroupedBatch<B> {
    /// The whole batch as one group, in the caller's order.
    pub fn new(x: Tensor<B, 4>) -> Self {
        let batch_size = x.dims()[0];
        Self { batch_size, groups: vec![SampleGroup { x, samples: (0..batch_size).collect() }] }
    }

    /// Number of samples.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The groups.
    pub fn groups(&self) -> &[SampleGroup<B>] {
        &self.groups
    }

    /// Caller indices of the rows, group after group.
    pub fn order(&self) -> Vec<usize> {
        self.groups.iter().flat_map(|g| g.samples.iter().copied()).collect()
    }

    /// Whether the batch is one group in the caller's order.
    pub fn is_whole(&self) -> bool {
        self.groups.len() == 1 && self.groups[0].samples.iter().enumerate().all(|(k, &b)| k == b)
    }

    /// Applies a row-wise function to every group (called with the group's index), keeping the
    /// grouping.
    pub fn map(self, mut f: impl FnMut(usize, Tensor<B, 4>) -> Tensor<B, 4>) -> Self {
        let groups = self
            .groups
            .into_iter()
            .enumerate()
            .map(|(k, g)| SampleGroup { x: f(k, g.x), samples: g.samples })
            .collect();
        Self { batch_size: self.batch_size, groups }
    }

    /// [`GroupedBatch::map`] with the groups as concurrent tasks.
    pub fn map_concurrent(self, f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4> + Sync + Send) -> Self {
        let groups = map_branches(self.groups, true, |g| SampleGroup { x: f(g.x), samples: g.samples });
        Self { batch_size: self.batch_size, groups }
    }

    /// The shape of the batch as one tensor, `[batch_size, channels, height, width]` (all zeros
    /// for a batch without groups).
    pub fn dims(&self) -> [usize; 4] {
        self.groups.first().map_or([0; 4], |g| {
            let [_, channels, height, width] = g.x.dims();
            [self.batch_size, channels, height, width]
        })
    }

    /// Applies a row-wise function with a 2-D result (pooling, a classifier) to every group and
    /// returns its rows in the caller's order.
    pub fn rows_to_caller(&self, mut f: impl FnMut(Tensor<B, 4>) -> Tensor<B, 2>) -> Tensor<B, 2> {
        let parts: Vec<Tensor<B, 2>> = self.groups.iter().map(|g| f(g.x.clone())).collect();
        if self.is_whole() {
            return parts.into_iter().next().expect("a whole batch is one group");
        }
        reorder_rows(cat_rows(parts), &inverse_order(&self.order()))
    }

    /// The batch as one tensor in the caller's order.
    pub fn into_tensor(self) -> Tensor<B, 4> {
        if self.is_whole() {
            return self.groups.into_iter().next().expect("a batch has a group").x;
        }
        let order = self.order();
        let rows = cat_rows(self.groups.into_iter().map(|g| g.x).collect());
        reorder_rows(rows, &inverse_order(&order))
    }

    /// Regroups the samples by `patterns[b]` (indexed by caller sample), groups in ascending
    /// pattern order, rows within a group in the current order. Returns the groups with their
    /// patterns.
    ///
    /// A group is one `cat` of runs of consecutive rows of the current groups; a group that is an
    /// existing group unchanged is reused and one that is a single run is a slice of it, without
    /// a copy.
    ///
    /// # Panics
    /// If `patterns` does not have one entry per sample.
    pub fn regroup(self, patterns: &[PathPattern]) -> (Self, Vec<PathPattern>) {
        let plan = self.plan_regroup(patterns);
        let group_patterns = plan.iter().map(|g| g.pattern).collect();
        (self.gather(plan, false, |_, x| x), group_patterns)
    }

    /// [`GroupedBatch::regroup`] followed by [`GroupedBatch::map`] with the group's pattern, in
    /// one pass: each group's function runs as soon as that group's rows are gathered. With
    /// `concurrent` the groups are concurrent tasks, so gathering one
    /// group overlaps with the work on the others and no group waits for the whole batch to be
    /// regrouped.
    ///
    /// # Panics
    /// If `patterns` does not have one entry per sample.
    pub fn regroup_map(
        self,
        patterns: &[PathPattern],
        concurrent: bool,
        f: impl Fn(PathPattern, Tensor<B, 4>) -> Tensor<B, 4> + Sync + Send,
    ) -> Self {
        let plan = self.plan_regroup(patterns);
        self.gather(plan, concurrent, f)
    }

    /// Where the rows of every new group come from.
    fn plan_regroup(&self, patterns: &[PathPattern]) -> Vec<GroupPlan> {
        assert_eq!(
            patterns.len(),
            self.batch_size,
            "{} gate patterns for a batch of {}",
            patterns.len(),
            self.batch_size
        );
        // where every sample is now: (group, row)
        let mut location = vec![(0, 0); self.batch_size];
        for (g, group) in self.groups.iter().enumerate() {
            for (row, &b) in group.samples.iter().enumerate() {
                location[b] = (g, row);
            }
        }
        let mut members: BTreeMap<PathPattern, Vec<usize>> = BTreeMap::new();
        for group in &self.groups {
            for &b in &group.samples {
                members.entry(patterns[b]).or_default().push(b);
            }
        }
        members
            .into_iter()
            .map(|(pattern, samples)| {
                // runs of consecutive rows of one current group
                let mut runs = Vec::new();
                let mut k = 0;
                while k < samples.len() {
                    let (g, start) = location[samples[k]];
                    let mut end = k + 1;
                    while end < samples.len() && location[samples[end]] == (g, start + end - k) {
                        end += 1;
                    }
                    runs.push((g, start..start + end - k));
                    k = end;
                }
                GroupPlan { pattern, runs, samples }
            })
            .collect()
    }

    /// Gathers the new groups of `plan` (one `cat` each, none for a single run) and applies `f`
    /// to each. A current group's buffer is released as soon as every new group drawing on it
    /// has been gathered.
    fn gather(
        self,
        plan: Vec<GroupPlan>,
        concurrent: bool,
        f: impl Fn(PathPattern, Tensor<B, 4>) -> Tensor<B, 4> + Sync + Send,
    ) -> Self {
        let pieces: Vec<_> = plan
            .into_iter()
            .map(|group| {
                let rows = group.runs.into_iter().map(|(g, rows)| {
                    let source = &self.groups[g];
                    if rows.len() == source.samples.len() {
                        source.x.clone()
                    } else {
                        source.x.clone().slice([rows])
                    }
                });
                (group.pattern, rows.collect::<Vec<_>>(), group.samples)
            })
            .collect();
        let batch_size = self.batch_size;
        drop(self);
        let concurrent = concurrent && pieces.len() > 1; // one group stays on this thread
        let groups = map_branches(pieces, concurrent, |(pattern, rows, samples)| SampleGroup {
            x: f(pattern, cat_rows(rows)),
            samples,
        });
        Self { batch_size, groups }
    }
}

/// One group of a regrouping: its pattern, its rows as runs `(current group, rows)`, and its
/// samples.
struct GroupPlan {
    pattern: PathPattern,
    runs: Vec<(usize, std::ops::Range<usize>)>,
    samples: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn batch(n: usize) -> Tensor<B, 4> {
        // sample b is filled with the value b
        let values: Vec<f32> = (0..n).flat_map(|b| std::iter::repeat_n(b as f32, 2 * 2 * 2)).collect();
        Tensor::from_data(TensorData::new(values, [n, 2, 2, 2]), &Default::default())
    }

    fn first_values(x: &Tensor<B, 4>) -> Vec<f32> {
        let n = x.dims()[0];
        x.clone().reshape([n, 8]).slice([0..n, 0..1]).into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn patterns_read_gates_above_one_half() {
        let p = patterns_from_host(&[1.0, 0.0, 0.0, 0.0, 0.6, 1.0], 3, 2);
        assert_eq!(p, vec![0b01, 0b00, 0b11]);
    }

    #[test]
    fn regroup_collects_equal_patterns_and_restores_the_order() {
        let x = batch(5);
        let (grouped, patterns) = GroupedBatch::new(x.clone()).regroup(&[3, 0, 1, 3, 1]);
        assert_eq!(patterns, vec![0, 1, 3]);
        let samples: Vec<Vec<usize>> = grouped.groups().iter().map(|g| g.samples.clone()).collect();
        assert_eq!(samples, vec![vec![1], vec![2, 4], vec![0, 3]]);
        for g in grouped.groups() {
            assert_eq!(first_values(&g.x), g.samples.iter().map(|&b| b as f32).collect::<Vec<_>>());
        }
        assert_eq!(grouped.order(), vec![1, 2, 4, 0, 3]);
        // a second regrouping draws rows from several groups
        let (regrouped, patterns) = grouped.regroup(&[0, 1, 1, 0, 1]);
        assert_eq!(patterns, vec![0, 1]);
        assert_eq!(regrouped.groups()[1].samples, vec![1, 2, 4]);
        assert_eq!(first_values(&regrouped.groups()[1].x), vec![1.0, 2.0, 4.0]);
        regrouped.clone().into_tensor().into_data().assert_eq(&x.to_data(), true);
        let pooled = regrouped.rows_to_caller(|t| {
            let n = t.dims()[0];
            t.reshape([n, 8]).slice([0..n, 0..1])
        });
        pooled.into_data().assert_eq(&TensorData::new(vec![0f32, 1.0, 2.0, 3.0, 4.0], [5, 1]), true);
    }

    #[test]
    fn regroup_map_applies_each_group_its_pattern() {
        let x = batch(5);
        // first values 0..5; every group adds its pattern
        let mapped =
            GroupedBatch::new(x).regroup_map(&[3, 0, 1, 3, 1], true, |pattern, t| t.add_scalar(pattern as f32));
        let samples: Vec<Vec<usize>> = mapped.groups().iter().map(|g| g.samples.clone()).collect();
        assert_eq!(samples, vec![vec![1], vec![2, 4], vec![0, 3]]);
        assert_eq!(first_values(&mapped.into_tensor()), vec![3.0, 1.0, 3.0, 6.0, 5.0]);
    }

    #[test]
    fn one_pattern_keeps_the_batch_whole() {
        let (grouped, patterns) = GroupedBatch::new(batch(4)).regroup(&[2, 2, 2, 2]);
        assert_eq!(patterns, vec![2]);
        assert!(grouped.is_whole());
    }

    #[test]
    #[should_panic = "3 gate patterns for a batch of 4"]
    fn wrong_number_of_patterns_panics() {
        let _ = GroupedBatch::new(batch(4)).regroup(&[0, 1, 2]);
    }
}

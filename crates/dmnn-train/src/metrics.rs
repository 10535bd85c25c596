//! Metrics of a DMNN run, computed from [`StepStats`]: loss and its terms, top-1/top-5 accuracy,
//! executed GMACs per image (mean and standard deviation over the epoch), MACs ratio, and the
//! open rate of every gated block.

use std::sync::Arc;

use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

use crate::step::StepStats;

impl Adaptor<StepStats> for StepStats {
    fn adapt(&self) -> StepStats {
        self.clone()
    }
}

/// What a [`DmnnMetric`] measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricKind {
    /// Total loss.
    Loss,
    /// Classifier cross-entropy.
    CrossEntropy,
    /// Auxiliary cross-entropy.
    AuxLoss,
    /// Cost penalty.
    CostLoss,
    /// Top-1 accuracy (%).
    Top1,
    /// Top-5 accuracy (%).
    Top5,
    /// Mean executed GMACs per image.
    GmacsMean,
    /// Standard deviation of executed GMACs per image over the epoch.
    GmacsStd,
    /// Mean executed MACs as a share of the all-paths-on network.
    MacsRatio,
    /// Open rate of gated block `l`.
    OpenRate(usize),
}

impl MetricKind {
    /// The metric's name (also its CSV column stem).
    pub fn name(&self) -> String {
        match self {
            Self::Loss => "loss".into(),
            Self::CrossEntropy => "ce".into(),
            Self::AuxLoss => "aux_loss".into(),
            Self::CostLoss => "cost_loss".into(),
            Self::Top1 => "top1".into(),
            Self::Top5 => "top5".into(),
            Self::GmacsMean => "gmacs_mean".into(),
            Self::GmacsStd => "gmacs_std".into(),
            Self::MacsRatio => "macs_ratio".into(),
            Self::OpenRate(l) => format!("open_rate_{l:02}"),
        }
    }
}

/// One numeric metric over [`StepStats`], aggregated over the epoch.
#[derive(Clone)]
pub struct DmnnMetric {
    kind: MetricKind,
    name: MetricName,
    // weighted sums over the epoch
    sum: f64,
    sum_sq: f64,
    count: f64,
    current: f64,
    current_count: usize,
}

impl DmnnMetric {
    /// A metric of the given kind.
    pub fn new(kind: MetricKind) -> Self {
        Self {
            kind,
            name: Arc::new(kind.name()),
            sum: 0.0,
            sum_sq: 0.0,
            count: 0.0,
            current: f64::NAN,
            current_count: 0,
        }
    }

    /// All metrics of a network with `blocks` gated blocks.
    pub fn all(blocks: usize) -> Vec<Self> {
        let mut kinds = vec![
            MetricKind::Loss,
            MetricKind::CrossEntropy,
            MetricKind::AuxLoss,
            MetricKind::CostLoss,
            MetricKind::Top1,
            MetricKind::Top5,
            MetricKind::GmacsMean,
            MetricKind::GmacsStd,
            MetricKind::MacsRatio,
        ];
        kinds.extend((0..blocks).map(MetricKind::OpenRate));
        kinds.into_iter().map(Self::new).collect()
    }

    fn running(&self) -> f64 {
        if self.count == 0.0 {
            return f64::NAN;
        }
        let mean = self.sum / self.count;
        match self.kind {
            MetricKind::GmacsStd => (self.sum_sq / self.count - mean * mean).max(0.0).sqrt(),
            _ => mean,
        }
    }
}

impl Metric for DmnnMetric {
    type Input = StepStats;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        let (unit, higher) = match self.kind {
            MetricKind::Top1 | MetricKind::Top5 => (Some("%".to_string()), true),
            MetricKind::GmacsMean | MetricKind::GmacsStd => (Some("GMACs".to_string()), false),
            _ => (None, false),
        };
        NumericAttributes { unit, higher_is_better: higher }.into()
    }

    fn update(&mut self, s: &StepStats, _metadata: &MetricMetadata) -> SerializedEntry {
        let n = s.batch_size as f64;
        let (value, weight, sum_sq) = match self.kind {
            MetricKind::Loss => (s.loss, n, 0.0),
            MetricKind::CrossEntropy => (s.ce, n, 0.0),
            MetricKind::AuxLoss => (s.aux, n, 0.0),
            MetricKind::CostLoss => (s.cost, n, 0.0),
            MetricKind::Top1 => (100.0 * s.correct_top1 as f64 / n, n, 0.0),
            MetricKind::Top5 => (100.0 * s.correct_top5 as f64 / n, n, 0.0),
            MetricKind::GmacsMean | MetricKind::GmacsStd => {
                let g: Vec<f64> = s.macs.iter().map(|m| m / 1e9).collect();
                let mean = g.iter().sum::<f64>() / n;
                (mean, n, g.iter().map(|v| v * v).sum::<f64>())
            }
            MetricKind::MacsRatio => (s.macs.iter().sum::<f64>() / n / s.macs_full, n, 0.0),
            MetricKind::OpenRate(l) => (s.block_rates.get(l).copied().unwrap_or(1.0), n, 0.0),
        };
        self.sum += value * weight;
        self.sum_sq += sum_sq;
        self.count += weight;
        // the batch value of the standard deviation is the batch's own, not its mean
        let value = match self.kind {
            MetricKind::GmacsStd => (sum_sq / n - value * value).max(0.0).sqrt(),
            _ => value,
        };
        self.current = value;
        self.current_count = s.batch_size;
        let running = self.running();
        let formatted = match self.kind {
            MetricKind::Top1 | MetricKind::Top5 => format!("epoch {running:.2} % - batch {value:.2} %"),
            _ => format!("epoch {running:.4} - batch {value:.4}"),
        };
        let serialized = NumericEntry::Aggregated { aggregated_value: value, count: s.batch_size }.serialize();
        SerializedEntry::new(formatted, serialized)
    }

    fn clear(&mut self) {
        *self = Self::new(self.kind);
    }
}

impl Numeric for DmnnMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Aggregated { aggregated_value: self.current, count: self.current_count }
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Aggregated { aggregated_value: self.running(), count: self.count as usize }
    }
}

/// Aggregates [`StepStats`] of a whole evaluation (used outside the Learner).
#[derive(Debug, Clone, Default)]
pub struct EvalSummary {
    /// Samples seen.
    pub samples: usize,
    /// Top-1 correct.
    pub correct_top1: usize,
    /// Top-5 correct.
    pub correct_top5: usize,
    /// Sum of the cross-entropy times the batch size.
    pub ce_sum: f64,
    /// Executed MACs of every sample.
    pub macs: Vec<f64>,
    /// MACs with every path on.
    pub macs_full: f64,
    /// Sum over batches of block open rates times the batch size.
    pub block_rate_sums: Vec<f64>,
}

impl EvalSummary {
    /// Adds one step.
    pub fn add(&mut self, s: &StepStats) {
        self.samples += s.batch_size;
        self.correct_top1 += s.correct_top1;
        self.correct_top5 += s.correct_top5;
        self.ce_sum += s.ce * s.batch_size as f64;
        self.macs.extend_from_slice(&s.macs);
        self.macs_full = s.macs_full;
        if self.block_rate_sums.len() < s.block_rates.len() {
            self.block_rate_sums.resize(s.block_rates.len(), 0.0);
        }
        for (acc, r) in self.block_rate_sums.iter_mut().zip(&s.block_rates) {
            *acc += r * s.batch_size as f64;
        }
    }

    /// Top-1 accuracy in [0, 1].
    pub fn top1(&self) -> f64 {
        self.correct_top1 as f64 / self.samples.max(1) as f64
    }

    /// Top-5 accuracy in [0, 1].
    pub fn top5(&self) -> f64 {
        self.correct_top5 as f64 / self.samples.max(1) as f64
    }

    /// Mean and standard deviation of the executed GMACs per image.
    pub fn gmacs(&self) -> (f64, f64) {
        let n = self.macs.len().max(1) as f64;
        let mean = self.macs.iter().sum::<f64>() / n / 1e9;
        let var = self.macs.iter().map(|m| (m / 1e9 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    /// Mean executed MACs as a share of the all-paths-on network.
    pub fn macs_ratio(&self) -> f64 {
        self.gmacs().0 * 1e9 / self.macs_full.max(1.0)
    }

    /// Mean open rate of every block.
    pub fn block_rates(&self) -> Vec<f64> {
        self.block_rate_sums.iter().map(|s| s / self.samples.max(1) as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::data::dataloader::Progress;

    fn stats(macs: Vec<f64>, top1: usize) -> StepStats {
        StepStats {
            batch_size: macs.len(),
            correct_top1: top1,
            correct_top5: macs.len(),
            macs,
            macs_full: 4e9,
            block_rates: vec![0.5, 1.0],
            ..Default::default()
        }
    }

    #[test]
    fn gmacs_std_is_over_all_images_of_the_epoch() {
        let meta = MetricMetadata {
            progress: Progress::new(1, 1),
            global_progress: Progress::new(1, 1),
            iteration: Some(1),
            lr: None,
        };
        let mut std = DmnnMetric::new(MetricKind::GmacsStd);
        let mut acc = DmnnMetric::new(MetricKind::Top1);
        // each batch alone has std 0; together 1 and 3 GMACs: std 1
        std.update(&stats(vec![1e9, 1e9], 1), &meta);
        std.update(&stats(vec![3e9, 3e9], 2), &meta);
        assert!((std.running_value().current() - 1.0).abs() < 1e-9);
        acc.update(&stats(vec![1e9, 1e9], 1), &meta);
        acc.update(&stats(vec![3e9, 3e9], 2), &meta);
        assert!((acc.running_value().current() - 75.0).abs() < 1e-9);
        let mut summary = EvalSummary::default();
        summary.add(&stats(vec![1e9, 1e9], 1));
        summary.add(&stats(vec![3e9, 3e9], 2));
        assert_eq!(summary.gmacs(), (2.0, 1.0));
        assert_eq!(summary.macs_ratio(), 0.5);
        assert_eq!(summary.block_rates(), vec![0.5, 1.0]);
    }

    /// The batch value of `gmacs_std` (what Burn's terminal UI shows as "batch") is the batch's
    /// standard deviation, not its mean.
    #[test]
    fn gmacs_std_batch_value_is_the_batch_std() {
        let meta = MetricMetadata {
            progress: Progress::new(1, 1),
            global_progress: Progress::new(1, 1),
            iteration: Some(1),
            lr: None,
        };
        let mut std = DmnnMetric::new(MetricKind::GmacsStd);
        std.update(&stats(vec![1e9, 3e9], 1), &meta);
        assert!((std.value().current() - 1.0).abs() < 1e-9, "{}", std.value().current());
        let mut mean = DmnnMetric::new(MetricKind::GmacsMean);
        mean.update(&stats(vec![1e9, 3e9], 1), &meta);
        assert!((mean.value().current() - 2.0).abs() < 1e-9);
    }
}

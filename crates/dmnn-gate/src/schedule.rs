//! Temperature schedules for the Gumbel gate.

use serde::{Deserialize, Serialize};

use crate::GateError;

/// How the Gumbel temperature moves over training.
///
/// `progress` runs from 0 (first step) to 1 (last step). A constant temperature of 1 is the
/// default; annealing towards a lower temperature makes the soft gradient closer to the hard
/// decision late in training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TemperatureSchedule {
    /// The same temperature throughout.
    Constant {
        /// The temperature.
        temperature: f64,
    },
    /// Linear interpolation from `start` to `end`.
    Linear {
        /// Temperature at progress 0.
        start: f64,
        /// Temperature at progress 1.
        end: f64,
    },
    /// Geometric interpolation from `start` to `end` (`start · (end/start)^progress`).
    Exponential {
        /// Temperature at progress 0.
        start: f64,
        /// Temperature at progress 1.
        end: f64,
    },
}

impl Default for TemperatureSchedule {
    fn default() -> Self {
        Self::Constant { temperature: 1.0 }
    }
}

impl TemperatureSchedule {
    /// The temperature at `progress` (clamped to `[0, 1]`).
    pub fn at(&self, progress: f64) -> f64 {
        let p = progress.clamp(0.0, 1.0);
        match *self {
            Self::Constant { temperature } => temperature,
            Self::Linear { start, end } => start + (end - start) * p,
            Self::Exponential { start, end } => start * (end / start).powf(p),
        }
    }

    /// Checks that every temperature the schedule can produce is positive and finite.
    ///
    /// # Errors
    /// The first endpoint that is not.
    pub fn validate(&self) -> Result<(), GateError> {
        let (a, b) = match *self {
            Self::Constant { temperature } => (temperature, temperature),
            Self::Linear { start, end } | Self::Exponential { start, end } => (start, end),
        };
        for t in [a, b] {
            if !(t.is_finite() && t > 0.0) {
                return Err(GateError::Temperature(t));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_midpoints() {
        let c = TemperatureSchedule::Constant { temperature: 0.7 };
        assert_eq!(c.at(0.0), 0.7);
        assert_eq!(c.at(1.0), 0.7);
        let l = TemperatureSchedule::Linear { start: 2.0, end: 1.0 };
        assert_eq!(l.at(0.5), 1.5);
        assert_eq!(l.at(7.0), 1.0);
        let e = TemperatureSchedule::Exponential { start: 4.0, end: 1.0 };
        assert!((e.at(0.5) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_non_positive() {
        assert!(TemperatureSchedule::Linear { start: 1.0, end: 0.0 }.validate().is_err());
        assert!(TemperatureSchedule::default().validate().is_ok());
    }
}

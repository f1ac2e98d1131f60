//! Learning-rate schedules, evaluated on the host for each step (the train-step program takes the
//! learning rate as an input, so one compiled program serves every step).
//!
//! Formulas are those of transformers' `get_constant_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup` (a `LambdaLR` multiplier of step index `s`, counted from 0):
//! warmup `s / warmup` for `s < warmup`, then constant 1, or the half cosine
//! `0.5·(1 + cos(π·(s − warmup)/(total − warmup)))` down to 0 at `total`.

#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Linear warmup over `warmup` steps, then constant.
    Constant { warmup: u64 },
    /// Linear warmup over `warmup` steps, then cosine decay to 0 at `total` steps.
    Cosine { warmup: u64, total: u64 },
}

impl Schedule {
    /// The learning-rate multiplier for step index `s` (0-based).
    pub fn factor(&self, s: u64) -> f64 {
        let (Schedule::Constant { warmup } | Schedule::Cosine { warmup, .. }) = *self;
        if s < warmup {
            return s as f64 / warmup.max(1) as f64;
        }
        match *self {
            Schedule::Constant { .. } => 1.0,
            Schedule::Cosine { warmup, total } => {
                let progress = (s - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate at step index `s` for peak learning rate `lr`.
    pub fn lr(&self, lr: f64, s: u64) -> f64 {
        lr * self.factor(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule::Cosine {
            warmup: 2,
            total: 6,
        };
        let f: Vec<f64> = (0..7).map(|i| s.factor(i)).collect();
        assert_eq!(&f[..3], &[0.0, 0.5, 1.0]);
        assert!((f[3] - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-15);
        assert!((f[4] - 0.5).abs() < 1e-15);
        assert!(f[6].abs() < 1e-15);
        let c = Schedule::Constant { warmup: 0 };
        assert_eq!(c.factor(0), 1.0);
        assert_eq!(c.lr(1e-3, 100), 1e-3);
    }
}

//! The optimiser side of a training step: AdamW with its moments in tensors we can save, the
//! dynamic loss scale of mixed precision, global gradient-norm clipping, the weight EMA and the
//! learning-rate schedule.
//!
//! AdamW is written here on tch tensors, with PyTorch's `torch.optim.AdamW` update, because tch
//! 0.24's optimiser does not expose its moments: ours are saved with every checkpoint, so a
//! resumed run continues bit for bit (on the CPU).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::trainer::Schedule;
use crate::config::{LrSchedule, OptimConfig};

/// Learning rate at batch `step` of `schedule`: linear warm-up over `schedule.warmup` steps, then
/// `cfg.schedule` ([`LrSchedule`]): cosine from `lr` to `lr · min_lr_ratio` at the last step, or a
/// decay by whole epochs counted from the end of the warm-up (`step`, `exponential`, `plateau`
/// with the factor `plateau_scale` it has reached), never below `lr · min_lr_ratio`, or
/// constant.
pub fn lr_at(step: u64, schedule: &Schedule, cfg: &OptimConfig, plateau_scale: f64) -> f64 {
    let (lr, warmup) = (cfg.lr, schedule.warmup);
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let floor = lr * cfg.min_lr_ratio;
    let epochs = (step - warmup) / schedule.steps_per_epoch.max(1) as u64;
    let decayed = |factor: f64| (lr * factor).max(floor);
    match cfg.schedule {
        LrSchedule::Cosine => {
            let span = schedule.total.saturating_sub(warmup).max(1) as f64;
            let t = ((step - warmup) as f64 / span).min(1.0);
            floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        LrSchedule::Step => {
            let decays = epochs / cfg.step_epochs.max(1) as u64;
            decayed(cfg.step_gamma.powf(decays as f64))
        }
        LrSchedule::Exponential => decayed(cfg.exp_gamma.powf(epochs as f64)),
        LrSchedule::Plateau => decayed(plateau_scale),
        LrSchedule::Constant => lr,
    }
}

/// Where the `plateau` schedule stands: saved with the training state, so a resumed run
/// continues it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plateau {
    /// The factor on `lr` reached so far.
    pub scale: f64,
    /// The best value of the watched metric so far.
    pub best: Option<f64>,
    /// Epochs since it last improved.
    pub bad_epochs: usize,
}

impl Default for Plateau {
    fn default() -> Self {
        Self {
            scale: 1.0,
            best: None,
            bad_epochs: 0,
        }
    }
}

impl Plateau {
    /// Account for an epoch whose watched metric is `value` (`lower_is_better` for a loss):
    /// an improvement is a relative change of more than `plateau_threshold` past the best so
    /// far; after more than `plateau_patience` epochs without one the factor is multiplied by
    /// `plateau_factor` and the count starts again. A non-finite value is no improvement.
    /// Returns whether the factor changed.
    pub fn update(&mut self, value: f64, lower_is_better: bool, cfg: &OptimConfig) -> bool {
        let thr = cfg.plateau_threshold;
        let improved = value.is_finite()
            && match self.best {
                None => true,
                Some(b) if lower_is_better => value < b - thr * b.abs(),
                Some(b) => value > b + thr * b.abs(),
            };
        if improved {
            self.best = Some(value);
            self.bad_epochs = 0;
            return false;
        }
        self.bad_epochs += 1;
        if self.bad_epochs > cfg.plateau_patience {
            self.scale *= cfg.plateau_factor;
            self.bad_epochs = 0;
            return true;
        }
        false
    }
}

/// AdamW (PyTorch's update) with its first and second moments, one pair per trainable tensor.
#[derive(Debug)]
pub struct AdamW {
    /// First moments.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Steps taken (the bias-correction count).
    pub step: u64,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &[Tensor]) -> Self {
        Self {
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            step: 0,
        }
    }

    /// One update of `params` from their gradients at learning rate `lr`. Parameters without a
    /// gradient are left alone.
    pub fn step(&mut self, params: &[Tensor], lr: f64, cfg: &OptimConfig) {
        self.step += 1;
        let bc1 = 1.0 - cfg.beta1.powi(self.step as i32);
        let bc2 = 1.0 - cfg.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let _ = p.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
                let _ = m.g_mul_scalar_(cfg.beta1);
                let _ = m.g_add_(&(&g * (1.0 - cfg.beta1)));
                let _ = v.g_mul_scalar_(cfg.beta2);
                let _ = v.g_add_(&(&g * &g * (1.0 - cfg.beta2)));
                let denom = v.sqrt() / bc2.sqrt() + cfg.eps;
                let _ = p.g_add_(&(&*m / denom * (-lr / bc1)));
            }
        });
    }
}

/// The dynamic loss scale of fp16 training: the loss is multiplied by `scale` before backward
/// and the gradients divided by it after; a step whose gradients are not finite is skipped and
/// halves the scale (by `loss_scale_backoff`), and `loss_scale_growth_interval` finite steps in a
/// row grow it (by `loss_scale_growth`). Disabled, the scale is 1 and never changes; a
/// non-finite step is still skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScale {
    /// Whether the loss is scaled at all.
    pub enabled: bool,
    /// The current scale.
    pub scale: f64,
    /// Finite steps since the last change of the scale.
    pub growth_tracker: usize,
}

impl LossScale {
    /// The scale `cfg` starts with.
    pub fn new(enabled: bool, cfg: &OptimConfig) -> Self {
        Self {
            enabled,
            scale: cfg.loss_scale,
            growth_tracker: 0,
        }
    }

    /// What the loss is multiplied by before backward.
    pub fn factor(&self) -> f64 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// After a step: `finite` says whether its gradients were. Returns whether the step is taken.
    pub fn update(&mut self, finite: bool, cfg: &OptimConfig) -> bool {
        if !self.enabled {
            return finite;
        }
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= cfg.loss_scale_growth_interval {
                self.scale *= cfg.loss_scale_growth;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= cfg.loss_scale_backoff;
            self.growth_tracker = 0;
        }
        finite
    }
}

/// Divide the gradients by `unscale` (when it is not 1) and return their global L2 norm
/// (infinite or NaN when one of them is).
pub fn unscale_and_norm(grads: &[Tensor], unscale: f64) -> f64 {
    let norms: Vec<Tensor> = tch::no_grad(|| {
        grads
            .iter()
            .filter(|g| g.defined())
            .map(|g| {
                if unscale != 1.0 {
                    let _ = g.shallow_clone().g_mul_scalar_(1.0 / unscale);
                }
                g.norm()
            })
            .collect()
    });
    if norms.is_empty() {
        0.0
    } else {
        Tensor::stack(&norms, 0).norm().double_value(&[])
    }
}

/// Scale the gradients so that their global norm `total` becomes at most `max_norm` (0 disables).
pub fn clip_grad_norm(grads: &[Tensor], total: f64, max_norm: f64) {
    if max_norm > 0.0 && total > max_norm {
        let c = max_norm / (total + 1e-6);
        tch::no_grad(|| {
            for g in grads.iter().filter(|g| g.defined()) {
                let _ = g.shallow_clone().g_mul_scalar_(c);
            }
        });
    }
}

/// An exponential moving average of every parameter (buffers included), with timm's warm-up of
/// the decay: `min(decay, (1 + step) / (10 + step))`.
#[derive(Debug)]
pub struct Ema {
    /// The averaged tensors, in the graph's parameter order.
    pub values: Vec<Tensor>,
    /// The configured decay.
    pub decay: f64,
}

impl Ema {
    /// An average starting at `params`' current values.
    pub fn new(params: &[Tensor], decay: f64) -> Self {
        Self {
            values: snapshot(params),
            decay,
        }
    }

    /// Fold `params` in after optimiser step `step`.
    pub fn update(&mut self, params: &[Tensor], step: u64) {
        let step = step as f64;
        let d = self.decay.min((1.0 + step) / (10.0 + step));
        tch::no_grad(|| {
            for (e, p) in self.values.iter_mut().zip(params) {
                let _ = e.g_mul_scalar_(d);
                let _ = e.g_add_(&(p.detach() * (1.0 - d)));
            }
        });
    }
}

/// Copy `src` into `dst`, tensor by tensor, without recording gradients.
pub fn copy_all(dst: &[Tensor], src: &[Tensor]) {
    tch::no_grad(|| {
        for (d, s) in dst.iter().zip(src) {
            d.shallow_clone().copy_(s);
        }
    });
}

/// Detached copies of `ts`.
pub fn snapshot(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(|t| t.detach().copy()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn schedule_warms_up_then_decays() {
        let sched = Schedule {
            steps_per_epoch: 10,
            total: 100,
            warmup: 10,
        };
        let mut cfg = OptimConfig {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            ..OptimConfig::default()
        };
        let lr = |s, cfg: &OptimConfig| lr_at(s, &sched, cfg, 1.0);
        assert!((lr(0, &cfg) - 1e-4).abs() < 1e-12);
        assert!((lr(9, &cfg) - 1e-3).abs() < 1e-12);
        assert!((lr(10, &cfg) - 1e-3).abs() < 1e-12);
        assert!((lr(100, &cfg) - 1e-4).abs() < 1e-12);
        for s in 10..100 {
            assert!(lr(s + 1, &cfg) <= lr(s, &cfg));
        }
        // step: × 0.5 every 2 epochs after the warm-up epoch, floored at 1e-4.
        cfg.schedule = LrSchedule::Step;
        cfg.step_epochs = 2;
        cfg.step_gamma = 0.5;
        let want = [
            1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4, 1e-4,
        ];
        for (e, w) in want.iter().enumerate() {
            let s = 10 + 10 * e as u64;
            assert!(
                (lr(s, &cfg) - w).abs() < 1e-12,
                "epoch {e}: {}",
                lr(s, &cfg)
            );
            assert!((lr(s + 9, &cfg) - w).abs() < 1e-12);
        }
        cfg.schedule = LrSchedule::Exponential;
        cfg.exp_gamma = 0.9;
        assert!((lr(35, &cfg) - 1e-3 * 0.81).abs() < 1e-12);
        cfg.schedule = LrSchedule::Constant;
        assert!((lr(95, &cfg) - 1e-3).abs() < 1e-12);
        cfg.schedule = LrSchedule::Plateau;
        assert!((lr(50, &cfg) - 1e-3).abs() < 1e-12);
        assert!((lr_at(50, &sched, &cfg, 0.3) - 3e-4).abs() < 1e-12);
        assert!((lr_at(50, &sched, &cfg, 0.01) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn plateau_decays_after_its_patience() {
        let cfg = OptimConfig {
            plateau_patience: 1,
            plateau_factor: 0.5,
            plateau_threshold: 0.01,
            ..OptimConfig::default()
        };
        let mut p = Plateau::default();
        // AUC (higher is better): 0.5, 0.6 improve; 0.605 is within 1% of 0.6, no improvement;
        // NaN neither: two bad epochs > patience 1, so the factor halves.
        let seen: Vec<(bool, f64)> = [0.5, 0.6, 0.605, f64::NAN, 0.7, 0.69, 0.69, 0.69]
            .iter()
            .map(|&v| (p.update(v, false, &cfg), p.scale))
            .collect();
        assert_eq!(
            seen,
            vec![
                (false, 1.0),
                (false, 1.0),
                (false, 1.0),
                (true, 0.5),
                (false, 0.5),
                (false, 0.5),
                (true, 0.25),
                (false, 0.25),
            ]
        );
        // A loss (lower is better).
        let mut p = Plateau::default();
        assert!(!p.update(1.0, true, &cfg));
        assert!(!p.update(0.5, true, &cfg));
        assert!(!p.update(0.6, true, &cfg));
        assert!(p.update(0.6, true, &cfg));
        assert_eq!(p.best, Some(0.5));
    }

    #[test]
    fn the_loss_scale_halves_on_overflow_and_grows_after_finite_steps() {
        let cfg = OptimConfig {
            loss_scale: 1024.0,
            loss_scale_growth_interval: 2,
            ..OptimConfig::default()
        };
        let mut s = LossScale::new(true, &cfg);
        assert!(!s.update(false, &cfg));
        assert_eq!(s.scale, 512.0);
        assert!(!s.update(false, &cfg));
        assert_eq!(s.scale, 256.0);
        assert!(s.update(true, &cfg));
        assert_eq!((s.scale, s.growth_tracker), (256.0, 1));
        assert!(s.update(true, &cfg));
        assert_eq!((s.scale, s.growth_tracker), (512.0, 0));
        let mut off = LossScale::new(false, &cfg);
        assert_eq!(off.factor(), 1.0);
        assert!(
            !off.update(false, &cfg),
            "a non-finite step is skipped without scaling too"
        );
        assert_eq!(off.scale, 1024.0);
    }

    #[test]
    fn adamw_matches_the_closed_form_first_step() {
        // First step: m = (1 - b1) g, v = (1 - b2) g^2, so the update is -lr * g / (|g| + eps').
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let loss = (&p * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float);
        loss.backward();
        let cfg = OptimConfig {
            weight_decay: 0.0,
            ..OptimConfig::default()
        };
        let mut adam = AdamW::new(std::slice::from_ref(&p));
        adam.step(std::slice::from_ref(&p), 0.1, &cfg);
        let got: Vec<f32> = Vec::try_from(&p.detach()).expect("values");
        assert!(
            (got[0] - 0.9).abs() < 1e-5 && (got[1] + 1.9).abs() < 1e-5,
            "{got:?}"
        );
        assert_eq!(adam.step, 1);
    }
}

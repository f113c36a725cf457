//! The learner of one fold: the network with its optimiser, loss scale and EMA, and the four
//! things a training loop does with them: [`resume`](Trainer::resume) from a checkpoint, run an
//! [`epoch`](Trainer::epoch) of [`step`](Trainer::step)s, [`validate`](Trainer::validate) and
//! [`save`](Trainer::save). [`super::fit_with`] composes them with the data, the schedule and the
//! history; nothing here knows about datasets or folds.

use std::path::Path;

use birdclef_models::card::Card;
use birdclef_models::checkpoint::{self, Checkpoint, NamedTensor};
use birdclef_models::fsio;
use birdclef_models::ir::{Graph, ParamKind};
use tch::{Device, Tensor};

use super::history::{read_history, EpochRow};
use super::optim::{self, AdamW, Ema, LossScale};
use super::state::{self, existing_dir, SavedTensors, TrainState, STATE_TENSORS};
use super::validate::{ValSet, Validation};
use super::{loss, lr_at};
use crate::config::TrainConfig;
use crate::data::batch::{Batch, BatchBuilder, Item};
use crate::data::DataError;
use crate::error::TrainError;
use crate::model::net::{self, Net};

/// What one epoch's steps did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// Mean training loss of the steps taken (NaN when every step was skipped).
    pub train_loss: f64,
    /// Steps skipped for inf/NaN gradients.
    pub skipped: usize,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Samples seen.
    pub samples: usize,
}

/// The learning-rate schedule of a run, in batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Batches per epoch.
    pub steps_per_epoch: usize,
    /// Batches in the whole run.
    pub total: u64,
    /// Warm-up batches.
    pub warmup: u64,
}

/// A network being trained, with everything a resumed run needs to continue it.
pub struct Trainer<'a> {
    cfg: &'a TrainConfig,
    model: Net,
    device: Device,
    /// fp16 autocast (CUDA with `optim.amp`).
    autocast: bool,
    /// Every parameter (buffers included) in graph order, and its name.
    names: Vec<String>,
    all: Vec<Tensor>,
    /// The trainable ones, and their names.
    trainable: Vec<Tensor>,
    trainable_names: Vec<String>,
    /// BatchNorm running statistics: restored after a skipped step, whose forward moved them.
    buffers: Vec<Tensor>,
    adam: AdamW,
    ema: Option<Ema>,
    scale: LossScale,
    /// Knowledge-distillation teachers, run in eval mode on every batch.
    kd_teachers: Vec<Net>,
    /// Epoch, steps, best metric: what `train_state.json` holds.
    pub state: TrainState,
    /// Every epoch's row so far (including those of a run this one resumed).
    pub history: Vec<EpochRow>,
}

impl<'a> Trainer<'a> {
    /// A fresh trainer of `graph` for fold `fold` on `device` (weights from `model.init` when
    /// the configuration names a checkpoint, else initialised from the seed).
    pub fn new(
        cfg: &'a TrainConfig,
        graph: Graph,
        fold: usize,
        device: Device,
    ) -> Result<Self, TrainError> {
        let o = &cfg.optim;
        let kinds: Vec<(String, ParamKind)> = graph
            .params
            .iter()
            .map(|p| (p.name.clone(), p.kind))
            .collect();
        let mut model = Net::new(graph, device, cfg.run.seed)?;
        if let Some(init) = &cfg.model.init {
            model
                .load_weights(&init.join(checkpoint::WEIGHTS_FILE))
                .map_err(|cause| TrainError::ModelInit {
                    path: init.clone(),
                    cause: Box::new(cause),
                })?;
        }
        let tensor = |n: &str| -> Result<Tensor, TrainError> {
            model
                .param(n)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| TrainError::MissingParameter {
                    name: n.to_string(),
                })
        };
        let mut names = Vec::new();
        let (mut all, mut trainable, mut trainable_names, mut buffers) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (n, kind) in &kinds {
            let t = tensor(n)?;
            match kind {
                ParamKind::Trainable => {
                    trainable.push(t.shallow_clone());
                    trainable_names.push(n.clone());
                }
                ParamKind::Buffer => buffers.push(t.shallow_clone()),
            }
            names.push(n.clone());
            all.push(t);
        }
        let adam = AdamW::new(&trainable);
        let ema = o.ema_decay.map(|d| Ema::new(&all, d));
        let autocast = o.amp && device.is_cuda();
        let scale = LossScale::new(autocast || o.force_loss_scale, o);
        let state = TrainState {
            epoch: 0,
            adam_step: 0,
            batch_step: 0,
            best_value: f64::NAN,
            best_epoch: 0,
            loss_scale: scale.scale,
            growth_tracker: 0,
            fold,
            n_folds: cfg.data.n_folds,
            ema: ema.is_some(),
            config: cfg.to_toml(),
            plateau: Default::default(),
        };
        Ok(Self {
            cfg,
            model,
            device,
            autocast,
            names,
            all,
            trainable,
            trainable_names,
            buffers,
            adam,
            ema,
            scale,
            kd_teachers: Vec::new(),
            state,
            history: Vec::new(),
        })
    }

    /// Learn also from `teachers` (knowledge distillation, as `distill.kd_weight` and
    /// `kd_temperature` say).
    pub fn set_kd_teachers(&mut self, teachers: Vec<Net>) {
        self.kd_teachers = teachers;
    }

    /// The loss of `logits` against the teachers' softened sigmoids on `x`: BCE of
    /// `sigmoid(logits / T)` against the mean over teachers of `sigmoid(teacher(x) / T)`.
    fn kd_loss(&self, x: &Tensor, logits: &Tensor) -> Result<Tensor, TrainError> {
        let t = self.cfg.distill.kd_temperature;
        let mut target = Tensor::zeros_like(logits).to_kind(tch::Kind::Float);
        for teacher in &self.kd_teachers {
            let y = tch::no_grad(|| tch::autocast(self.autocast, || teacher.f_forward(x, false)))
                .map_err(|e| TrainError::from(Box::new(e)))?;
            target += y.to_kind(tch::Kind::Float).divide_scalar(t).sigmoid();
        }
        let target = target / self.kd_teachers.len().max(1) as f64;
        Ok(logits
            .to_kind(tch::Kind::Float)
            .divide_scalar(t)
            .binary_cross_entropy_with_logits(
                &target,
                None::<Tensor>,
                None::<Tensor>,
                tch::Reduction::Mean,
            ))
    }

    /// Continue the run saved in checkpoint `dir` (a `last/`): weights, AdamW's moments, the EMA,
    /// steps, loss scale, and the history of `out_dir` up to that epoch; the best value so far is
    /// what `best_dir` holds. Refuses a checkpoint of another fold or configuration.
    pub fn resume(
        &mut self,
        dir: &Path,
        best_dir: &Path,
        out_dir: &Path,
    ) -> Result<(), TrainError> {
        let saved = state::read_state(dir)?;
        if saved.fold != self.state.fold {
            return Err(TrainError::Resume {
                dir: dir.to_path_buf(),
                reason: format!("saved for fold {}, not {}", saved.fold, self.state.fold),
            });
        }
        let now = self.cfg.to_toml();
        if saved.config != now {
            let old: Vec<&str> = saved.config.lines().collect();
            let changed: Vec<String> = now
                .lines()
                .filter(|l| !old.contains(l))
                .map(|l| format!("`{}`", l.trim()))
                .collect();
            return Err(TrainError::Resume {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the run was started with another configuration (now {}); resuming would \
                     mix two experiments. Restore the saved configuration ({}/config.toml) or \
                     start a new run directory",
                    if changed.is_empty() {
                        "some keys were removed".to_string()
                    } else {
                        changed.join(", ")
                    },
                    out_dir.display()
                ),
            });
        }
        let tensors = SavedTensors::read(dir, STATE_TENSORS)?;
        let raw: Vec<Tensor> = self
            .names
            .iter()
            .zip(&self.all)
            .map(|(n, p)| tensors.get(&format!("param/{n}"), p, self.device))
            .collect::<Result<_, TrainError>>()?;
        optim::copy_all(&self.all, &raw);
        for (i, n) in self.trainable_names.iter().enumerate() {
            self.adam.m[i] =
                tensors.get(&format!("adam_m/{n}"), &self.trainable[i], self.device)?;
            self.adam.v[i] =
                tensors.get(&format!("adam_v/{n}"), &self.trainable[i], self.device)?;
        }
        self.adam.step = saved.adam_step;
        if let Some(e) = &mut self.ema {
            let weights = SavedTensors::read(dir, checkpoint::WEIGHTS_FILE)?;
            for (n, slot) in self.names.iter().zip(e.values.iter_mut()) {
                *slot = weights.get(n, slot, self.device)?;
            }
        }
        self.scale.scale = saved.loss_scale;
        self.scale.growth_tracker = saved.growth_tracker;
        self.state = saved;
        // The best so far is what best/ holds (it is written before last/).
        if let Some(b) = existing_dir(best_dir) {
            if let Ok(bs) = state::read_state(&b) {
                self.state.best_value = bs.best_value;
                self.state.best_epoch = bs.best_epoch;
            }
        }
        self.history = read_history(out_dir);
        self.history.retain(|r| r.epoch <= self.state.epoch);
        Ok(())
    }

    /// One optimiser step on `batch` at learning rate `lr`: forward in training mode (fp16
    /// autocast when enabled), the loss (times the loss scale), backward, gradients unscaled,
    /// then, if they are all finite, clipped to the global norm and applied by AdamW, and the
    /// EMA updated. A step with inf/NaN gradients is skipped: the weights stay as they were, the
    /// BatchNorm running statistics its forward moved are put back, and the loss scale backs
    /// off. Returns the step's loss, or `None` when it was skipped.
    pub fn step(&mut self, batch: &Batch, lr: f64) -> Result<Option<f64>, TrainError> {
        let o = &self.cfg.optim;
        let n = batch.shape[0];
        let k = batch.y.len() / n.max(1);
        let to_device =
            |what: &str| TrainError::torch(format!("moving the batch {what} to the device"));
        let x =
            net::tensor_from(&batch.x, &batch.shape, self.device).map_err(to_device("inputs"))?;
        let y = net::tensor_from(&batch.y, &[n, k], self.device).map_err(to_device("targets"))?;
        let w = net::tensor_from(&batch.w, &[n, k], self.device).map_err(to_device("weights"))?;
        for p in &self.trainable {
            p.shallow_clone().zero_grad();
        }
        let stats = optim::snapshot(&self.buffers);
        let logits = tch::autocast(self.autocast, || self.model.f_forward(&x, true))?;
        let mut l = loss(&logits, &y, &w, &self.cfg.loss);
        if !self.kd_teachers.is_empty() {
            let kd = self.cfg.distill.kd_weight;
            l = l * (1.0 - kd) + self.kd_loss(&x, &logits)? * kd;
        }
        let factor = self.scale.factor();
        (&l * factor).backward();
        let grads: Vec<Tensor> = self.trainable.iter().map(Tensor::grad).collect();
        let total = optim::unscale_and_norm(&grads, factor);
        self.state.batch_step += 1;
        let taken = self.scale.update(total.is_finite(), o);
        self.state.loss_scale = self.scale.scale;
        self.state.growth_tracker = self.scale.growth_tracker;
        if !taken {
            optim::copy_all(&self.buffers, &stats);
            return Ok(None);
        }
        let value = l.double_value(&[]);
        optim::clip_grad_norm(&grads, total, o.grad_clip_norm);
        self.adam.step(&self.trainable, lr, o);
        self.state.adam_step = self.adam.step;
        if let Some(e) = &mut self.ema {
            e.update(&self.all, self.adam.step);
        }
        Ok(Some(value))
    }

    /// The steps of epoch `epoch`: `schedule.steps_per_epoch` batches of `bs` samples of
    /// `items`, built on `pool` by a producer thread two batches ahead of the steps.
    pub fn epoch(
        &mut self,
        builder: &BatchBuilder<'_>,
        pool: &rayon::ThreadPool,
        items: &[Item],
        bs: usize,
        epoch: usize,
        schedule: Schedule,
    ) -> Result<EpochStats, TrainError> {
        let o = &self.cfg.optim;
        let steps = schedule.steps_per_epoch;
        let (mut loss_sum, mut taken, mut skipped, mut samples, mut lr) = (0.0, 0usize, 0, 0, 0.0);
        std::thread::scope(|s| -> Result<(), TrainError> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch, DataError>>(2);
            s.spawn(move || {
                for b in 0..steps {
                    let batch = pool.install(|| builder.build_items(items, bs, epoch, b));
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..steps {
                let batch = rx.recv().map_err(TrainError::BatchBuilder)??;
                samples += batch.shape[0];
                lr = lr_at(
                    self.state.batch_step,
                    &schedule,
                    o,
                    self.state.plateau.scale,
                );
                match self.step(&batch, lr)? {
                    Some(l) => {
                        loss_sum += l;
                        taken += 1;
                    }
                    None => skipped += 1,
                }
            }
            Ok(())
        })?;
        Ok(EpochStats {
            train_loss: if taken == 0 {
                f64::NAN
            } else {
                loss_sum / taken as f64
            },
            skipped,
            lr,
            samples,
        })
    }

    /// Run `f` with the weights a checkpoint holds, the EMA's when there is one, put in place;
    /// `f` also gets the raw (trained) weights. The raw weights are restored afterwards.
    pub fn with_eval_weights<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &[Tensor]) -> Result<T, TrainError>,
    ) -> Result<T, TrainError> {
        let Some(ema) = &self.ema else {
            let raw: Vec<Tensor> = self.all.iter().map(Tensor::shallow_clone).collect();
            return f(self, &raw);
        };
        let raw = optim::snapshot(&self.all);
        optim::copy_all(&self.all, &ema.values);
        let result = f(self, &raw);
        optim::copy_all(&self.all, &raw);
        result
    }

    /// Score the network on `val` (call inside [`with_eval_weights`](Self::with_eval_weights)).
    pub fn validate(&self, val: &ValSet) -> Result<(Validation, Option<String>), TrainError> {
        val.score(
            &self.model,
            self.cfg.data.val_batch_size,
            self.autocast,
            &self.cfg.loss,
            self.cfg.run.f1_decision(),
        )
    }

    /// Write checkpoint directory `dir` atomically: the current weights with `card`, the
    /// reference batch (`reference` and the network's output on it, computed on the CPU so that
    /// it is what ONNX Runtime must reproduce), and the training state with the `raw` weights and
    /// AdamW's moments. Call inside [`with_eval_weights`](Self::with_eval_weights).
    pub fn save(
        &self,
        dir: &Path,
        card: &Card,
        reference: &NamedTensor,
        raw: &[Tensor],
    ) -> Result<(), TrainError> {
        fsio::write_dir_atomic(dir, |tmp| -> Result<(), TrainError> {
            self.model
                .save_weights(&tmp.join(checkpoint::WEIGHTS_FILE))?;
            card.save(&tmp.join(checkpoint::CARD_FILE))?;
            let output = self.reference_output(reference, dir)?;
            checkpoint::write_tensors(
                &tmp.join(checkpoint::REFERENCE_FILE),
                &[reference.clone(), output],
                None,
            )?;
            let mut pairs: Vec<(String, Tensor)> = self
                .names
                .iter()
                .zip(raw)
                .map(|(n, t)| (format!("param/{n}"), t.shallow_clone()))
                .collect();
            for (i, n) in self.trainable_names.iter().enumerate() {
                pairs.push((format!("adam_m/{n}"), self.adam.m[i].shallow_clone()));
                pairs.push((format!("adam_v/{n}"), self.adam.v[i].shallow_clone()));
            }
            checkpoint::write_tensors(&tmp.join(STATE_TENSORS), &state::named(pairs)?, None)?;
            state::write_state(tmp, &self.state)?;
            Checkpoint::open(tmp)?;
            Ok(())
        })
    }

    /// The network's eval-mode output on `reference`, computed on the CPU: on a GPU, cuDNN
    /// (TF32 by default in libtorch 2.11, which tch cannot turn off) gives logits about 1e-3 off
    /// ONNX Runtime's, so the reference comes from a CPU copy of the weights.
    fn reference_output(
        &self,
        reference: &NamedTensor,
        origin: &Path,
    ) -> Result<NamedTensor, TrainError> {
        let x = net::tensor_from(&reference.data, &reference.shape, Device::Cpu)
            .map_err(TrainError::torch("the reference input"))?;
        let y = if self.device == Device::Cpu {
            tch::no_grad(|| self.model.f_forward(&x, false))?
        } else {
            let mut cpu = Net::new(self.model.graph().clone(), Device::Cpu, 0)?;
            cpu.set_tensors(&self.model.tensors()?, origin)?;
            tch::no_grad(|| cpu.f_forward(&x, false))?
        };
        Ok(NamedTensor {
            name: "output".into(),
            shape: y.size().iter().map(|&d| d as usize).collect(),
            data: net::to_vec_f32(&y).map_err(TrainError::torch("reading the reference output"))?,
        })
    }
}

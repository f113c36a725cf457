//! The tch interpreter of the layer-graph IR ([`birdclef_models::ir`]).
//!
//! [`Net`] holds a [`Graph`] and one tch variable per graph parameter, in a [`VarStore`] under
//! exactly the parameter's IR name (`stages.0.blocks.0.main.inverted_conv.conv.weight`), so the
//! checkpoint key, the tch variable, the ONNX initializer and the timm `state_dict` key are one
//! string. tch forbids `.` in a variable name and silently renames a duplicate to `name__N`; the
//! variables are therefore created through nested [`tch::nn::Path::sub`] calls, one per dotted
//! component, and [`Net::new`] checks afterwards that the store holds exactly the IR names.
//!
//! Weights move in and out through the one checkpoint format of [`birdclef_models::checkpoint`]
//! ([`Net::save_weights`], [`Net::load_weights`]); [`Net::import_timm`] loads a timm
//! `state_dict` saved as safetensors, with timm's rules for a changed input-channel count and a
//! changed class count.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use birdclef_models::checkpoint::{self, CheckpointError, NamedTensor};
use birdclef_models::ir::{Activation, Graph, Op, ParamId, ParamKind};
use birdclef_models::rng::Rng;
use tch::nn::VarStore;
use tch::{Device, Kind, TchError, Tensor};

/// Why a network could not be built, run, loaded or saved. Every variant says what and where.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The graph cannot be interpreted (invalid, or names tch cannot hold).
    #[error("graph {graph}: {reason}")]
    Graph {
        /// The graph's name.
        graph: String,
        /// What is wrong.
        reason: String,
    },
    /// The input tensor does not fit the graph.
    #[error("graph {graph}: bad input: {reason}")]
    Input {
        /// The graph's name.
        graph: String,
        /// What is wrong.
        reason: String,
    },
    /// libtorch refused an operation.
    #[error("{context}: {cause}")]
    Torch {
        /// What was being done (e.g. the node).
        context: String,
        /// libtorch's error.
        cause: TchError,
    },
    /// A weights file could not be read or written, or does not fit the graph.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A timm state dict does not fit the graph; lists every problem.
    #[error("{path}: cannot import these timm weights into {graph}: {}", .problems.join("; "))]
    Import {
        /// The weights file.
        path: PathBuf,
        /// The graph's name.
        graph: String,
        /// Every missing, unexpected or mis-shaped tensor.
        problems: Vec<String>,
    },
}

fn torch_err(context: impl Into<String>) -> impl FnOnce(TchError) -> NetError {
    let context = context.into();
    move |cause| NetError::Torch { context, cause }
}

/// What [`Net::import_timm`] did with a timm state dict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Parameters copied unchanged.
    pub copied: Vec<String>,
    /// The first convolution's weight, adapted to another input-channel count
    /// (`(name, channels in the file, channels of the graph)`), as timm's `adapt_input_conv` does.
    pub adapted: Option<(String, usize, usize)>,
    /// Classifier parameters left at their fresh initialisation (the class count differs, or the
    /// file has no classifier), with the reason.
    pub fresh: Vec<(String, String)>,
    /// Tensors of the file that belong to a head this graph does not have (the reference
    /// classifier of an architecture built here with the SED head), ignored.
    pub dropped: Vec<String>,
}

impl ImportReport {
    /// Human-readable warnings: fresh classifier parameters and dropped head tensors.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.fresh.is_empty() {
            let list: Vec<String> = self
                .fresh
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect();
            w.push(format!(
                "classifier parameters left at their fresh initialisation: {}",
                list.join(", ")
            ));
        }
        if !self.dropped.is_empty() {
            w.push(format!(
                "tensors of a head this architecture does not have, ignored: {}",
                self.dropped.join(", ")
            ));
        }
        w
    }

    /// One line: counts and the adaptation, for provenance notes and logs.
    pub fn summary(&self) -> String {
        let mut s = format!("{} tensors copied", self.copied.len());
        if let Some((name, from, to)) = &self.adapted {
            let how = if *to == 1 {
                "summed over RGB".to_string()
            } else {
                format!("RGB repeated and scaled by 3/{to}")
            };
            s.push_str(&format!(
                ", {name} adapted from {from} to {to} channel(s) ({how})"
            ));
        }
        if !self.fresh.is_empty() {
            let names: Vec<&str> = self.fresh.iter().map(|(n, _)| n.as_str()).collect();
            s.push_str(&format!(", fresh init: {}", names.join(", ")));
        }
        if !self.dropped.is_empty() {
            s.push_str(&format!(", ignored: {}", self.dropped.join(", ")));
        }
        s
    }
}

/// How a forward pass treats BatchNorm and dropout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Running statistics, no dropout.
    Eval,
    /// Batch statistics (running ones updated with the op's momentum), dropout on.
    Train,
    /// Batch statistics copied into the running ones (momentum 1), no dropout.
    CalibrateBatchNorm,
}

/// A network: an IR graph and its tch variables.
#[derive(Debug)]
pub struct Net {
    graph: Graph,
    vs: VarStore,
    /// Shallow clones of the store's variables, indexed by [`ParamId`].
    params: Vec<Tensor>,
    /// For each value, the index of the last node that reads it (usize::MAX for the output).
    last_use: Vec<usize>,
}

impl Net {
    /// Create the variables of `graph` on `device`, initialised from the graph's [`Init`]s with a
    /// generator seeded by `seed`. The values are drawn in Rust, in parameter order, so they depend
    /// only on the seed: not on the device, on libtorch's global generator or on other threads.
    pub fn new(graph: Graph, device: Device, seed: u64) -> Result<Self, NetError> {
        let graph_err = |reason: String| NetError::Graph {
            graph: graph.name.clone(),
            reason,
        };
        graph
            .validate()
            .map_err(|e| graph_err(e.reason().to_string()))?;
        let vs = VarStore::new(device);
        let root = vs.root();
        let mut rng = Rng::new(seed);
        let mut params = Vec::with_capacity(graph.params.len());
        for p in &graph.params {
            let parts: Vec<&str> = p.name.split('.').collect();
            if parts.iter().any(|s| s.is_empty()) {
                return Err(graph_err(format!(
                    "parameter name {:?} has an empty dotted component",
                    p.name
                )));
            }
            let (last, scopes) = parts
                .split_last()
                .ok_or_else(|| graph_err("a parameter has no name".into()))?;
            let path = scopes.iter().fold(root.clone(), |path, s| path.sub(*s));
            let values = p.init.sample(p.numel(), &mut rng);
            let t = tensor_from(&values, &p.shape, device)
                .map_err(torch_err(format!("creating {}", p.name)))?;
            params.push(path.add(last, t, p.kind == ParamKind::Trainable));
        }
        let mut want: Vec<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
        want.sort_unstable();
        let mut have: Vec<String> = vs.variables().into_keys().collect();
        have.sort_unstable();
        if have != want {
            let want_set: BTreeSet<&str> = want.iter().copied().collect();
            let have_set: BTreeSet<&str> = have.iter().map(String::as_str).collect();
            let extra: Vec<&str> = have_set.difference(&want_set).copied().collect();
            let missing: Vec<&str> = want_set.difference(&have_set).copied().collect();
            return Err(graph_err(format!(
                "the tch variable names differ from the IR names (renamed duplicates?): \
                 in the store only: {extra:?}; in the graph only: {missing:?}"
            )));
        }
        let last_use = graph.last_uses();
        Ok(Self {
            graph,
            vs,
            params,
            last_use,
        })
    }

    /// Build the network of a checkpoint directory (card + weights) on `device`.
    pub fn from_checkpoint(dir: &Path, device: Device) -> Result<Self, NetError> {
        let ckpt = checkpoint::Checkpoint::open(dir)?;
        let path = dir.join(checkpoint::WEIGHTS_FILE);
        let mut net = Self::new(ckpt.graph, device, 0)?;
        net.set_tensors(&ckpt.weights, &path)?;
        Ok(net)
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The variable store (for optimisers: its trainable variables are the graph's
    /// [`ParamKind::Trainable`] parameters).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Mutable access to the variable store (e.g. to freeze it).
    pub fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The variable of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&Tensor> {
        let i = self.graph.params.iter().position(|p| p.name == name)?;
        self.params.get(i)
    }

    /// Run the network on `x` (`[N, in_chans, H, W]`). In training mode (`train`), BatchNorm uses
    /// and updates batch statistics and dropout is active; otherwise BatchNorm uses its running
    /// statistics and dropout is the identity.
    ///
    /// # Panics
    /// When [`f_forward`](Self::f_forward) fails (an input of the wrong shape); use that for
    /// input that has not been checked.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self.f_forward(x, train) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`forward`](Self::forward) returning an error instead of panicking.
    pub fn f_forward(&self, x: &Tensor, train: bool) -> Result<Tensor, NetError> {
        self.forward_mode(x, if train { Mode::Train } else { Mode::Eval })
    }

    /// Set every BatchNorm's running statistics to the statistics of `x` (one pass, momentum 1,
    /// dropout off, no gradients). `birdclef-train init` does this for freshly initialised
    /// networks: with running mean 0 and variance 1, eval-mode activations on log-mel input drift
    /// far from unit scale, and a reference batch would then test little but the last bias.
    pub fn calibrate_batch_norm(&self, x: &Tensor) -> Result<(), NetError> {
        tch::no_grad(|| self.forward_mode(x, Mode::CalibrateBatchNorm)).map(|_| ())
    }

    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor, NetError> {
        let size = x.size();
        if size.len() != 4 || size[1] != self.graph.in_chans as i64 {
            return Err(NetError::Input {
                graph: self.graph.name.clone(),
                reason: format!("expected [N, {}, H, W], got {size:?}", self.graph.in_chans),
            });
        }
        let x = if x.device() == self.device() {
            x.shallow_clone()
        } else {
            x.f_to_device(self.device())
                .map_err(torch_err("moving the input to the device"))?
        };
        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(self.graph.nodes.len() + 1);
        values.push(Some(x));
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let inputs = node
                .inputs
                .iter()
                .map(|&v| values.get(v).and_then(Option::as_ref))
                .collect::<Option<Vec<&Tensor>>>()
                .ok_or_else(|| NetError::Graph {
                    graph: self.graph.name.clone(),
                    reason: format!("node {i} ({}) reads a value that is gone", node.name),
                })?;
            let y = self
                .run_op(&node.op, &inputs, mode)
                .map_err(|cause| NetError::Torch {
                    context: format!(
                        "graph {}, node {i} ({}, {})",
                        self.graph.name,
                        node.name,
                        node.op.name()
                    ),
                    cause,
                })?;
            values.push(Some(y));
            for &v in &node.inputs {
                if self.last_use[v] == i {
                    values[v] = None;
                }
            }
        }
        values
            .get_mut(self.graph.output)
            .and_then(Option::take)
            .ok_or_else(|| NetError::Graph {
                graph: self.graph.name.clone(),
                reason: format!("output value {} was not computed", self.graph.output),
            })
    }

    fn p(&self, id: ParamId) -> &Tensor {
        // Graph::validate (in `new`) checked every parameter index of every node.
        &self.params[id]
    }

    fn run_op(&self, op: &Op, xs: &[&Tensor], mode: Mode) -> Result<Tensor, TchError> {
        let x = xs
            .first()
            .copied()
            .ok_or_else(|| TchError::Kind(format!("{} has no input", op.name())))?;
        let second = || {
            xs.get(1)
                .copied()
                .ok_or_else(|| TchError::Kind(format!("{} needs two inputs", op.name())))
        };
        let axes = |a: &[usize]| a.iter().map(|&v| v as i64).collect::<Vec<i64>>();
        match op {
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                groups,
            } => x.f_conv2d(
                self.p(*weight),
                bias.map(|b| self.p(b)),
                [stride[0] as i64, stride[1] as i64],
                [padding[0] as i64, padding[1] as i64],
                [1i64, 1],
                *groups as i64,
            ),
            Op::BatchNorm {
                weight,
                bias,
                running_mean,
                running_var,
                eps,
                momentum,
            } => x.f_batch_norm(
                Some(self.p(*weight)),
                Some(self.p(*bias)),
                Some(self.p(*running_mean)),
                Some(self.p(*running_var)),
                mode != Mode::Eval,
                if mode == Mode::CalibrateBatchNorm {
                    1.0
                } else {
                    *momentum
                },
                *eps,
                true,
            ),
            Op::Act(a) => match a {
                Activation::Relu => x.f_relu(),
                Activation::Relu6 => x.f_relu6(),
                Activation::Hardswish => x.f_hardswish(),
                // PyTorch's hardsigmoid is relu6(x + 3) / 6.
                Activation::Hardsigmoid => x.f_hardsigmoid(),
                Activation::Silu => x.f_silu(),
                Activation::Sigmoid => x.f_sigmoid(),
                Activation::Tanh => x.f_tanh(),
            },
            Op::Add => x.f_add(second()?),
            Op::Mul => x.f_mul(second()?),
            Op::GlobalAvgPool => x.f_mean_dim([2i64, 3].as_slice(), false, None::<Kind>),
            Op::ReduceMean { axes: a, keepdim } => {
                x.f_mean_dim(axes(a).as_slice(), *keepdim, None::<Kind>)
            }
            Op::ReduceSum { axes: a, keepdim } => {
                x.f_sum_dim_intlist(axes(a).as_slice(), *keepdim, None::<Kind>)
            }
            Op::Softmax { axis } => x.f_softmax(*axis as i64, None::<Kind>),
            Op::Flatten => x.f_flatten(1, -1),
            Op::Linear { weight, bias } => x.f_linear(self.p(*weight), bias.map(|b| self.p(b))),
            Op::LayerNorm { weight, bias, eps } => {
                let f = self.p(*weight).size();
                x.f_layer_norm(
                    f.as_slice(),
                    Some(self.p(*weight)),
                    Some(self.p(*bias)),
                    *eps,
                    true,
                )
            }
            Op::Concat { axis } => Tensor::f_cat(xs, *axis as i64),
            Op::LinearAttention { dim, eps } => linear_attention(x, *dim as i64, *eps),
            Op::Dropout { p } => {
                if mode == Mode::Train && *p > 0.0 {
                    x.f_dropout(*p, true)
                } else {
                    Ok(x.shallow_clone())
                }
            }
            Op::DropPath { p } => {
                if mode == Mode::Train && *p > 0.0 {
                    drop_path(x, *p)
                } else {
                    Ok(x.shallow_clone())
                }
            }
        }
    }

    /// Every parameter as an `f32` CPU [`NamedTensor`], in graph order.
    pub fn tensors(&self) -> Result<Vec<NamedTensor>, NetError> {
        self.graph
            .params
            .iter()
            .zip(&self.params)
            .map(|(p, t)| {
                let data = to_vec_f32(t).map_err(torch_err(format!("reading {}", p.name)))?;
                Ok(NamedTensor {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    data,
                })
            })
            .collect()
    }

    /// Copy `tensors` into the variables after checking with [`checkpoint::check_weights`] that
    /// they are exactly the graph's parameters with the graph's shapes (`origin` names the file in
    /// the error, which lists every problem). Nothing is changed when the check fails.
    pub fn set_tensors(&mut self, tensors: &[NamedTensor], origin: &Path) -> Result<(), NetError> {
        checkpoint::check_weights(&self.graph, tensors, origin)?;
        let by_name: BTreeMap<&str, &NamedTensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for (i, p) in self.graph.params.iter().enumerate() {
            if let Some(t) = by_name.get(p.name.as_str()) {
                self.copy_into(i, &t.data)?;
            }
        }
        Ok(())
    }

    /// Overwrite parameter `id` in place (the store's variable shares the storage).
    fn copy_into(&self, id: ParamId, data: &[f32]) -> Result<(), NetError> {
        let p = &self.graph.params[id];
        let src = tensor_from(data, &p.shape, self.vs.device())
            .map_err(torch_err(format!("loading {}", p.name)))?;
        let mut dst = self.params[id].shallow_clone();
        tch::no_grad(|| dst.f_copy_(&src)).map_err(torch_err(format!("loading {}", p.name)))
    }

    /// Write every parameter (trainable and BatchNorm buffers) to a safetensors file, `f32`,
    /// keyed by the IR names, atomically ([`checkpoint::write_tensors`]).
    pub fn save_weights(&self, path: &Path) -> Result<(), NetError> {
        let tensors = self.tensors()?;
        checkpoint::write_tensors(path, &tensors, None)?;
        Ok(())
    }

    /// Load a weights file written by [`save_weights`](Self::save_weights) (or any safetensors
    /// file with exactly the graph's names and shapes). The error names the file and lists every
    /// missing, unexpected and mis-shaped tensor; nothing is changed then.
    pub fn load_weights(&mut self, path: &Path) -> Result<(), NetError> {
        let tensors = checkpoint::read_tensors(path)?;
        self.set_tensors(&tensors, path)
    }

    /// Import a timm `state_dict` saved as safetensors (`num_batches_tracked` is ignored).
    ///
    /// * A tensor whose name and shape match a parameter is copied.
    /// * The graph's first convolution, when the file has 3 input channels and the graph `C != 3`,
    ///   is adapted as timm's `adapt_input_conv` does: summed over R, G, B for `C = 1`; otherwise
    ///   the RGB filters are repeated to `ceil(C / 3) * 3` channels, cut to `C` and scaled by `3/C`.
    /// * The classifier (the layers that produce the logits) is left at its fresh initialisation
    ///   when only its class count differs or the file has none; [`ImportReport::warnings`] lists
    ///   it. Tensors of the reference classifier head are ignored when this graph has another
    ///   head (SED).
    /// * Anything else missing, unexpected or mis-shaped is an error that names the file and
    ///   lists every problem; nothing is changed then.
    pub fn import_timm(&mut self, path: &Path) -> Result<ImportReport, NetError> {
        let tensors: Vec<NamedTensor> = checkpoint::read_tensors(path)?
            .into_iter()
            .filter(|t| !t.name.ends_with("num_batches_tracked"))
            .collect();
        let by_name: BTreeMap<&str, &NamedTensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let classifier: HashSet<ParamId> = self.graph.classifier_params().into_iter().collect();
        let first_conv = self.graph.first_conv_weight();
        let droppable = birdclef_models::nets::replaced_head_params(&self.graph);

        let mut report = ImportReport::default();
        let mut plan: Vec<(ParamId, Vec<f32>)> = Vec::new();
        let mut problems = Vec::new();
        for (i, p) in self.graph.params.iter().enumerate() {
            let Some(t) = by_name.get(p.name.as_str()) else {
                if classifier.contains(&i) {
                    report
                        .fresh
                        .push((p.name.clone(), "not in the file".to_string()));
                } else {
                    problems.push(format!("missing {} {:?}", p.name, p.shape));
                }
                continue;
            };
            if t.shape == p.shape {
                plan.push((i, t.data.clone()));
                report.copied.push(p.name.clone());
            } else if Some(i) == first_conv {
                match adapt_input_conv(&t.data, &t.shape, &p.shape) {
                    Some(data) => {
                        report.adapted = Some((p.name.clone(), t.shape[1], p.shape[1]));
                        plan.push((i, data));
                    }
                    None => problems.push(format!(
                        "{} (the first convolution) has shape {:?} in the file, the \
                         architecture needs {:?}; only 3 input channels can be adapted",
                        p.name, t.shape, p.shape
                    )),
                }
            } else if classifier.contains(&i)
                && t.shape.len() == p.shape.len()
                && t.shape.first() != p.shape.first()
                && t.shape[1..] == p.shape[1..]
            {
                report.fresh.push((
                    p.name.clone(),
                    format!("{} classes in the file, {} here", t.shape[0], p.shape[0]),
                ));
            } else {
                problems.push(format!(
                    "{} has shape {:?} in the file, the architecture needs {:?}",
                    p.name, t.shape, p.shape
                ));
            }
        }
        for t in &tensors {
            if self.graph.param(&t.name).is_none() {
                if droppable.contains(&t.name) {
                    report.dropped.push(t.name.clone());
                } else {
                    problems.push(format!("unexpected {} {:?}", t.name, t.shape));
                }
            }
        }
        if !problems.is_empty() {
            return Err(NetError::Import {
                path: path.to_path_buf(),
                graph: self.graph.name.clone(),
                problems,
            });
        }
        for (i, data) in plan {
            self.copy_into(i, &data)?;
        }
        Ok(report)
    }
}

impl tch::nn::ModuleT for Net {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward(xs, train)
    }
}

/// EfficientViT's ReLU linear attention (see [`Op::LinearAttention`]), as timm's `LiteMLA`:
/// reshape to `[N, groups, H*W, 3*dim]`, ReLU on q and k, v padded with a column of ones, then
/// `q (kᵀ v)` in fp32 with autocast off, divided by the last column + eps.
fn linear_attention(x: &Tensor, dim: i64, eps: f64) -> Result<Tensor, TchError> {
    let size = x.size();
    let &[n, c, h, w] = size.as_slice() else {
        return Err(TchError::Shape(format!(
            "linear attention needs [N, C, H, W], got {size:?}"
        )));
    };
    if dim <= 0 || c % (3 * dim) != 0 {
        return Err(TchError::Shape(format!(
            "linear attention: {c} channels are not groups of 3 x {dim}"
        )));
    }
    let qkv = x
        .f_reshape([n, c / (3 * dim), 3 * dim, h * w])?
        .f_transpose(-1, -2)?;
    let q = qkv.f_narrow(-1, 0, dim)?.f_relu()?;
    let k = qkv.f_narrow(-1, dim, dim)?.f_relu()?;
    let v = qkv
        .f_narrow(-1, 2 * dim, dim)?
        .f_pad([0i64, 1].as_slice(), "constant", 1.0)?;
    let kind = v.kind();
    let out = tch::autocast(false, || -> Result<Tensor, TchError> {
        let (q, k, v) = (
            q.f_to_kind(Kind::Float)?,
            k.f_to_kind(Kind::Float)?,
            v.f_to_kind(Kind::Float)?,
        );
        let kv = k.f_transpose(-1, -2)?.f_matmul(&v)?;
        let out = q.f_matmul(&kv)?;
        let num = out.f_narrow(-1, 0, dim)?;
        let den = out.f_narrow(-1, dim, 1)?.f_add_scalar(eps)?;
        num.f_div(&den)
    })?;
    out.f_to_kind(kind)?
        .f_transpose(-1, -2)?
        .f_reshape([n, c / 3, h, w])
}

/// Stochastic depth: each sample of `x` zeroed with probability `p`, the others scaled by
/// `1 / (1 - p)` (one Bernoulli draw per sample from libtorch's generator).
fn drop_path(x: &Tensor, p: f64) -> Result<Tensor, TchError> {
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    let keep = Tensor::f_rand(shape.as_slice(), (Kind::Float, x.device()))?
        .f_ge(p)?
        .f_to_kind(x.kind())?;
    x.f_mul(&keep)?.f_div_scalar(1.0 - p)
}

/// timm's `adapt_input_conv` for a weight `[O, 3, kh, kw]` and a graph that needs `[O, C, kh, kw]`:
/// `C = 1` sums over R, G, B; otherwise RGB is repeated to `ceil(C/3)*3` channels, cut to `C` and
/// scaled by `3/C`. `None` when the shapes do not allow it.
pub fn adapt_input_conv(data: &[f32], from: &[usize], to: &[usize]) -> Option<Vec<f32>> {
    let (&[o, i, kh, kw], &[o2, c, kh2, kw2]) = (from, to) else {
        return None;
    };
    if i != 3 || c == 3 || c == 0 || (o, kh, kw) != (o2, kh2, kw2) || data.len() != o * i * kh * kw
    {
        return None;
    }
    let k = kh * kw;
    let mut out = vec![0f32; o * c * k];
    for oi in 0..o {
        let src = &data[oi * 3 * k..(oi + 1) * 3 * k];
        let dst = &mut out[oi * c * k..(oi + 1) * c * k];
        if c == 1 {
            for j in 0..k {
                // Summed in f32 in channel order, as torch's sum over dim 1 does for 3 terms.
                dst[j] = src[j] + src[k + j] + src[2 * k + j];
            }
        } else {
            let scale = 3.0 / c as f32;
            for ci in 0..c {
                let s = &src[(ci % 3) * k..(ci % 3 + 1) * k];
                for j in 0..k {
                    dst[ci * k + j] = s[j] * scale;
                }
            }
        }
    }
    Some(out)
}

/// A tensor of `shape` on `device` holding `data`.
pub fn tensor_from(data: &[f32], shape: &[usize], device: Device) -> Result<Tensor, TchError> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let t = Tensor::f_from_slice(data)?.f_reshape(dims.as_slice())?;
    if device == Device::Cpu {
        Ok(t)
    } else {
        t.f_to_device(device)
    }
}

/// The values of any tensor as `f32` on the CPU, row-major.
pub fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>, TchError> {
    let flat = t
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?
        .f_reshape([-1i64].as_slice())?;
    Vec::<f32>::try_from(&flat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use birdclef_models::ir::{GraphBuilder, Init};

    fn tiny(dropout: f64) -> Graph {
        let mut b = GraphBuilder::new("tiny", 2);
        let x = b.input();
        let y = b.conv_bn_act("stem", x, 6, 3, 2, 1, Some(Activation::Hardswish));
        let z = b.conv("blocks.0.dw", y, 6, 3, 1, 6, true);
        let z = b.act("blocks.0.act", z, Activation::Hardsigmoid);
        let y = b.mul("blocks.0", y, z);
        let p = b.global_avg_pool(y);
        let p = b.dropout("head.drop", p, dropout);
        let o = b.linear("head.fc", p, 3, true);
        b.finish(o).expect("graph")
    }

    fn input(shape: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn variables_carry_exactly_the_ir_names() {
        let g = tiny(0.0);
        let net = Net::new(g.clone(), Device::Cpu, 1).expect("net");
        let vars = net.var_store().variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut want: Vec<&String> = g.params.iter().map(|p| &p.name).collect();
        want.sort();
        assert_eq!(names, want);
        assert!(vars.contains_key("stem.norm.running_var"));
        // Only trainable parameters reach the optimiser.
        let trainable: i64 = net
            .var_store()
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum();
        assert_eq!(trainable as usize, g.trainable_count());
        assert!(!net
            .param("stem.norm.running_mean")
            .expect("buffer")
            .requires_grad());
    }

    #[test]
    fn names_tch_cannot_hold_are_refused() {
        let mut g = tiny(0.0);
        g.params[0].name = "stem..weight".into();
        let err = Net::new(g, Device::Cpu, 0).expect_err("empty component");
        assert!(err.to_string().contains("empty dotted component"), "{err}");
    }

    #[test]
    fn init_is_deterministic_per_seed_and_follows_the_ir() {
        let a = Net::new(tiny(0.0), Device::Cpu, 7)
            .expect("a")
            .tensors()
            .expect("a");
        let b = Net::new(tiny(0.0), Device::Cpu, 7)
            .expect("b")
            .tensors()
            .expect("b");
        let c = Net::new(tiny(0.0), Device::Cpu, 8)
            .expect("c")
            .tensors()
            .expect("c");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let g = tiny(0.0);
        for (t, p) in a.iter().zip(&g.params) {
            match p.init {
                Init::Zeros => assert!(t.data.iter().all(|&v| v == 0.0), "{}", p.name),
                Init::Ones => assert!(t.data.iter().all(|&v| v == 1.0), "{}", p.name),
                Init::Uniform { bound } => {
                    assert!(
                        t.data.iter().all(|&v| f64::from(v).abs() <= bound),
                        "{}",
                        p.name
                    )
                }
                Init::Normal { .. } => {}
            }
        }
        let mut rng = Rng::new(3);
        let v = Init::Normal { std: 0.5 }.sample(20_000, &mut rng);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var.sqrt() - 0.5).abs() < 0.02,
            "{mean} {var}"
        );
    }

    #[test]
    fn train_mode_batchnorm_updates_running_stats_eval_does_not() {
        let net = Net::new(tiny(0.0), Device::Cpu, 1).expect("net");
        let x = input(&[4, 2, 8, 8], 1) * 3.0 + 1.0;
        let mean0 = net.param("stem.norm.running_mean").expect("m").copy();
        let var0 = net.param("stem.norm.running_var").expect("v").copy();
        let e1 = tch::no_grad(|| net.forward(&x, false));
        assert_eq!(
            max_diff(&mean0, net.param("stem.norm.running_mean").expect("m")),
            0.0
        );
        let _ = net.forward(&x, true);
        let mean1 = net.param("stem.norm.running_mean").expect("m").copy();
        let var1 = net.param("stem.norm.running_var").expect("v").copy();
        assert!(max_diff(&mean0, &mean1) > 1e-4);
        assert!(max_diff(&var0, &var1) > 1e-4);
        // momentum 0.1: new = 0.9 old + 0.1 batch statistic (unbiased variance).
        let conv = x.conv2d(
            net.param("stem.conv.weight").expect("w"),
            None::<Tensor>,
            [2, 2],
            [1, 1],
            [1, 1],
            1,
        );
        let batch_mean = conv.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
        assert!(max_diff(&mean1, &(batch_mean * 0.1)) < 1e-5);
        let batch_var = conv.var_dim([0i64, 2, 3].as_slice(), true, false);
        assert!(max_diff(&var1, &(batch_var * 0.1 + 0.9)) < 1e-4);
        // Eval output changed because the running statistics did.
        let e2 = tch::no_grad(|| net.forward(&x, false));
        assert!(max_diff(&e1, &e2) > 1e-6);
    }

    #[test]
    fn dropout_only_in_train_mode() {
        let mut b = GraphBuilder::new("drop", 1);
        let x = b.input();
        let y = b.dropout("d", x, 0.5);
        // Over the one channel (the IR refuses reductions over the batch).
        let y = b.reduce_mean("m", y, vec![1], false);
        let g = b.finish(y).expect("graph");
        let net = Net::new(g, Device::Cpu, 0).expect("net");
        let x = Tensor::ones([1, 1, 64, 64], (Kind::Float, Device::Cpu));
        let eval = net.forward(&x, false);
        assert_eq!(max_diff(&eval, &x.squeeze_dim(1)), 0.0);
        let train = net.forward(&x, true);
        let zeros = train.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        let twos = train.eq(2.0).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(zeros + twos, 64 * 64);
        assert!(zeros > 1500 && twos > 1500, "{zeros} {twos}");
        // And the dropout of a whole network: eval is deterministic, train is not.
        let net = Net::new(tiny(0.5), Device::Cpu, 1).expect("net");
        let x = input(&[2, 2, 8, 8], 2);
        let e1 = net.forward(&x, false);
        let e2 = net.forward(&x, false);
        assert_eq!(max_diff(&e1, &e2), 0.0);
        let t1 = net.forward(&x, true);
        let t2 = net.forward(&x, true);
        assert!(max_diff(&t1, &t2) > 1e-6);
    }

    #[test]
    fn activations_follow_pytorch_definitions() {
        let x = Tensor::from_slice(&[-5.0f32, -3.0, -1.5, 0.0, 0.7, 3.0, 4.5, 8.0]);
        let relu6 = |t: &Tensor| t.clamp(0.0, 6.0);
        let hsig = relu6(&(&x + 3.0)) / 6.0;
        assert!(max_diff(&x.hardsigmoid(), &hsig) < 1e-7);
        assert!(max_diff(&x.hardswish(), &(&x * &hsig)) < 1e-6);
        for (act, want) in [
            (Activation::Hardsigmoid, hsig.shallow_clone()),
            (Activation::Relu6, relu6(&x)),
            (Activation::Silu, &x * x.sigmoid()),
            (Activation::Tanh, x.tanh()),
        ] {
            let mut b = GraphBuilder::new("act", 1);
            let i = b.input();
            let y = b.act("a", i, act);
            let net = Net::new(b.finish(y).expect("g"), Device::Cpu, 0).expect("net");
            let got = net.forward(&x.view([1, 1, 1, 8]), false).view([8]);
            assert!(max_diff(&got, &want) < 1e-6, "{act:?}");
        }
    }

    #[test]
    fn linear_attention_matches_the_definition() {
        // Two head groups of dim 4: out = q (kᵀ [v|1]) then the last column divides.
        let (n, g, d, h, w) = (2i64, 2i64, 4i64, 3i64, 5i64);
        let x = input(&[n, g * 3 * d, h, w], 5);
        let got = linear_attention(&x, d, 1e-5).expect("attn");
        assert_eq!(got.size(), [n, g * d, h, w]);
        let x64 = x.to_kind(Kind::Double);
        for bi in 0..n {
            for gi in 0..g {
                let blk = x64
                    .get(bi)
                    .narrow(0, gi * 3 * d, 3 * d)
                    .reshape([3 * d, h * w]);
                let q = blk.narrow(0, 0, d).relu().tr(); // [HW, d]
                let k = blk.narrow(0, d, d).relu().tr();
                let v = blk.narrow(0, 2 * d, d).tr();
                let ones = Tensor::ones([h * w, 1], (Kind::Double, Device::Cpu));
                let v1 = Tensor::cat(&[v, ones], 1);
                let out = q.matmul(&k.tr().matmul(&v1));
                let want = out.narrow(1, 0, d) / (out.narrow(1, d, 1) + 1e-5);
                let want = want.tr().reshape([d, h, w]);
                let have = got.get(bi).narrow(0, gi * d, d).to_kind(Kind::Double);
                assert!(max_diff(&have, &want) < 1e-5, "batch {bi} group {gi}");
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let net = Net::new(tiny(0.0), Device::Cpu, 0).expect("net");
        let err = net
            .f_forward(&input(&[1, 3, 8, 8], 0), false)
            .expect_err("3 channels");
        assert!(err.to_string().contains("expected [N, 2, H, W]"), "{err}");
        assert!(net.f_forward(&input(&[3, 8, 8], 0), false).is_err());
    }

    #[test]
    fn weights_round_trip_and_mismatches_name_the_file() {
        let dir = std::env::temp_dir().join(format!("birdclef-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("w.safetensors");
        let a = Net::new(tiny(0.0), Device::Cpu, 1).expect("a");
        a.save_weights(&path).expect("save");
        let mut b = Net::new(tiny(0.0), Device::Cpu, 2).expect("b");
        assert_ne!(a.tensors().expect("a"), b.tensors().expect("b"));
        b.load_weights(&path).expect("load");
        assert_eq!(a.tensors().expect("a"), b.tensors().expect("b"));
        let x = input(&[2, 2, 8, 8], 3);
        assert_eq!(max_diff(&a.forward(&x, false), &b.forward(&x, false)), 0.0);

        // A graph with another head: every problem listed, the file named, nothing changed.
        let mut bld = GraphBuilder::new("other", 2);
        let i = bld.input();
        let y = bld.conv_bn_act("stem", i, 6, 3, 2, 1, None);
        let p = bld.global_avg_pool(y);
        let o = bld.linear("head.fc", p, 4, true);
        let mut c = Net::new(bld.finish(o).expect("g"), Device::Cpu, 0).expect("c");
        let before = c.tensors().expect("c");
        let err = c.load_weights(&path).expect_err("mismatch").to_string();
        assert!(err.contains("w.safetensors"), "{err}");
        assert!(err.contains("head.fc.weight has shape [3, 6]"), "{err}");
        assert!(err.contains("unexpected blocks.0.dw.weight"), "{err}");
        assert_eq!(c.tensors().expect("c"), before);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn input_conv_adaptation_follows_timm() {
        // [O=2, 3, 1, 1]: R, G, B = 1, 2, 4 and 10, 20, 40.
        let w = [1.0f32, 2.0, 4.0, 10.0, 20.0, 40.0];
        let one = adapt_input_conv(&w, &[2, 3, 1, 1], &[2, 1, 1, 1]).expect("1");
        assert_eq!(one, [7.0, 70.0]);
        let two = adapt_input_conv(&w, &[2, 3, 1, 1], &[2, 2, 1, 1]).expect("2");
        assert_eq!(two, [1.5, 3.0, 15.0, 30.0]);
        let four = adapt_input_conv(&w, &[2, 3, 1, 1], &[2, 4, 1, 1]).expect("4");
        assert_eq!(four, [0.75, 1.5, 3.0, 0.75, 7.5, 15.0, 30.0, 7.5]);
        assert!(adapt_input_conv(&w, &[2, 3, 1, 1], &[2, 3, 1, 1]).is_none());
        assert!(adapt_input_conv(&w[..4], &[2, 2, 1, 1], &[2, 1, 1, 1]).is_none());
        assert!(adapt_input_conv(&w, &[2, 3, 1, 1], &[3, 1, 1, 1]).is_none());
    }

    #[test]
    fn classifier_layers_are_found_for_both_heads() {
        for (spec, want) in [
            (
                "efficientvit_b0",
                vec!["head.classifier.4.weight", "head.classifier.4.bias"],
            ),
            ("mnasnet_100", vec!["classifier.weight", "classifier.bias"]),
            (
                "efficientnet_b0+sed",
                vec![
                    "sed.att.weight",
                    "sed.att.bias",
                    "sed.cla.weight",
                    "sed.cla.bias",
                ],
            ),
        ] {
            let g = birdclef_models::nets::build_spec(spec, 1, 5).expect("graph");
            let names: Vec<&str> = g
                .classifier_params()
                .into_iter()
                .map(|i| g.params[i].name.as_str())
                .collect();
            assert_eq!(names, want, "{spec}");
        }
    }

    #[test]
    fn stochastic_depth_acts_only_in_training() {
        for name in birdclef_models::nets::ARCHITECTURES {
            let plain = birdclef_models::nets::build_spec(name, 1, 3).expect("plain");
            let deep = birdclef_models::nets::build_spec_with(name, 1, 3, 0.5).expect("deep");
            let a = Net::new(plain, Device::Cpu, 4).expect("net");
            let b = Net::new(deep, Device::Cpu, 4).expect("net");
            let x = input(&[4, 1, 32, 48], 3);
            let (ea, eb) = tch::no_grad(|| (a.forward(&x, false), b.forward(&x, false)));
            assert_eq!(max_diff(&ea, &eb), 0.0, "{name}: eval outputs differ");
            tch::manual_seed(11);
            let ta = tch::no_grad(|| a.forward(&x, true));
            tch::manual_seed(11);
            let tb = tch::no_grad(|| b.forward(&x, true));
            assert!(max_diff(&ta, &tb) > 1e-4, "{name}: training outputs equal");
        }
        // One sample dropped whole, the others scaled by 1 / (1 - p).
        let x = Tensor::ones([64, 2, 3, 3], (Kind::Float, Device::Cpu));
        tch::manual_seed(5);
        let y = drop_path(&x, 0.25).expect("drop path");
        let per: Vec<f32> =
            Vec::try_from(&y.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float))
                .expect("sums");
        assert!(
            per.iter()
                .all(|&s| s == 0.0 || (s - 18.0 / 0.75).abs() < 1e-4),
            "{per:?}"
        );
        let dropped = per.iter().filter(|&&s| s == 0.0).count();
        assert!(
            (4..=28).contains(&dropped),
            "{dropped} of 64 dropped at p = 0.25"
        );
    }
}

//! The layer-graph IR: every network is written once, here, and read by two interpreters —
//! `birdclef-train` runs it with libtorch (tch) and `birdclef-export` writes it as ONNX.
//!
//! A [`Graph`] is a list of named parameters and a topologically ordered list of [`Node`]s over
//! 4-D `NCHW` (or 2-D `NF`) tensors with a dynamic batch dimension. Parameter names are the
//! contract between the three places a weight lives: the safetensors key in a checkpoint, the tch
//! variable, and the ONNX initializer are the same string, and the networks in
//! [`crate::nets`] name them like timm's `state_dict()` keys, so timm weights load without a rename.
//!
//! Networks are built with [`GraphBuilder`], whose methods add a layer and return the new value:
//!
//! ```
//! use birdclef_models::ir::{Activation, GraphBuilder};
//! let mut b = GraphBuilder::new("tiny", 1);
//! let x = b.input();
//! let x = b.conv_bn_act("stem", x, 8, 3, 2, 1, Some(Activation::Hardswish));
//! let x = b.global_avg_pool(x);
//! let y = b.linear("head.fc", x, 5, true);
//! let g = b.finish(y).unwrap();
//! assert_eq!(g.param("stem.conv.weight").unwrap().shape, vec![8, 1, 3, 3]);
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Index of a value: 0 is the graph input, node `i` produces value `i + 1`.
pub type ValueId = usize;
/// Index into [`Graph::params`].
pub type ParamId = usize;

/// Element-wise activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x * relu6(x + 3) / 6`.
    Hardswish,
    /// `relu6(x + 3) / 6` (PyTorch's definition; ONNX HardSigmoid with alpha 1/6, beta 0.5).
    Hardsigmoid,
    /// `x * sigmoid(x)` (SiLU / Swish).
    Silu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

/// How a parameter is initialised when a network is trained from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// Uniform in `[-bound, bound]`.
    Uniform {
        /// Half-width.
        bound: f64,
    },
}

/// What a parameter is for; buffers are not trained by the optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A trained weight or bias.
    Trainable,
    /// A running statistic (BatchNorm mean/variance), updated in training mode, not by gradients.
    Buffer,
}

/// A named tensor of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// Full dotted name, e.g. `stages.0.blocks.0.main.inverted_conv.conv.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Trainable or buffer.
    pub kind: ParamKind,
    /// Initialisation from scratch.
    pub init: Init,
}

impl Param {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One operation. Tensors are `NCHW` unless stated; the batch dimension is dynamic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// 2-D convolution; weight `[out, in / groups, kh, kw]`, symmetric zero padding.
    Conv2d {
        /// Weight parameter.
        weight: ParamId,
        /// Optional bias `[out]`.
        bias: Option<ParamId>,
        /// Stride (h, w).
        stride: [usize; 2],
        /// Zero padding on each side (h, w).
        padding: [usize; 2],
        /// Channel groups.
        groups: usize,
    },
    /// Batch normalisation over channels (running statistics in eval mode).
    BatchNorm {
        /// Scale `[C]`.
        weight: ParamId,
        /// Shift `[C]`.
        bias: ParamId,
        /// Running mean `[C]` (buffer).
        running_mean: ParamId,
        /// Running variance `[C]` (buffer).
        running_var: ParamId,
        /// Added to the variance.
        eps: f64,
        /// Running-statistics update factor in training mode.
        momentum: f64,
    },
    /// Element-wise activation.
    Act(Activation),
    /// `a + b` (broadcasting).
    Add,
    /// `a * b` (broadcasting, e.g. squeeze-excitation gates `[N, C, 1, 1]`).
    Mul,
    /// `[N, C, H, W] -> [N, C]`: mean over H and W.
    GlobalAvgPool,
    /// Mean over `axes`, optionally keeping them as size 1.
    ReduceMean {
        /// Axes to reduce.
        axes: Vec<usize>,
        /// Keep reduced axes.
        keepdim: bool,
    },
    /// Sum over `axes`, optionally keeping them as size 1.
    ReduceSum {
        /// Axes to reduce.
        axes: Vec<usize>,
        /// Keep reduced axes.
        keepdim: bool,
    },
    /// Softmax over one axis.
    Softmax {
        /// The axis.
        axis: usize,
    },
    /// Flatten everything after the batch dimension: `[N, ...] -> [N, F]`.
    Flatten,
    /// `[N, F_in] -> [N, F_out]`; weight `[F_out, F_in]`.
    Linear {
        /// Weight parameter.
        weight: ParamId,
        /// Optional bias.
        bias: Option<ParamId>,
    },
    /// Layer normalisation over the last dimension of `[N, F]`.
    LayerNorm {
        /// Scale `[F]`.
        weight: ParamId,
        /// Shift `[F]`.
        bias: ParamId,
        /// Added to the variance.
        eps: f64,
    },
    /// Concatenate the inputs along `axis`.
    Concat {
        /// The axis.
        axis: usize,
    },
    /// EfficientViT's ReLU linear attention (LiteMLA core), always computed in fp32.
    /// Input `[N, G * 3 * dim, H, W]` (G head groups of q, k, v); output `[N, G * dim, H, W]`:
    /// per group, with `q, k` ReLU'd and `v` padded with a column of ones,
    /// `out = q (kᵀ [v | 1])`, then `out[..., :dim] / (out[..., dim] + eps)`.
    LinearAttention {
        /// Channels per head (q, k and v each).
        dim: usize,
        /// Added to the normaliser.
        eps: f64,
    },
    /// Dropout with probability `p` in training; identity in eval and in ONNX.
    Dropout {
        /// Drop probability.
        p: f64,
    },
}

/// A node: an operation applied to earlier values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Scope name (the module path), for debugging and ONNX node names.
    pub name: String,
    /// The operation.
    pub op: Op,
    /// Input values.
    pub inputs: Vec<ValueId>,
}

/// A complete network. See the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Architecture name.
    pub name: String,
    /// Input channels (the input is `[N, in_chans, H, W]`).
    pub in_chans: usize,
    /// Parameters in creation order.
    pub params: Vec<Param>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// The output value (`[N, num_classes]` logits).
    pub output: ValueId,
}

/// A graph that breaks the IR's rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid graph {graph}: {reason}")]
pub struct GraphError {
    /// The graph's name.
    pub graph: String,
    /// What is wrong.
    pub reason: String,
}

impl Graph {
    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Number of trainable elements (what timm and papers call the parameter count).
    pub fn trainable_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.kind == ParamKind::Trainable)
            .map(Param::numel)
            .sum()
    }

    /// Check the rules: unique parameter names, inputs defined before use, parameter indices in
    /// range, output defined.
    pub fn validate(&self) -> Result<(), GraphError> {
        let fail = |reason: String| {
            Err(GraphError {
                graph: self.name.clone(),
                reason,
            })
        };
        let mut seen = HashMap::new();
        for (i, p) in self.params.iter().enumerate() {
            if p.name.is_empty() {
                return fail(format!("parameter {i} has no name"));
            }
            if let Some(j) = seen.insert(p.name.as_str(), i) {
                return fail(format!(
                    "parameter name {:?} is used twice ({j} and {i})",
                    p.name
                ));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.inputs.is_empty() {
                return fail(format!("node {i} ({}) has no input", n.name));
            }
            if let Some(bad) = n.inputs.iter().find(|&&v| v > i) {
                return fail(format!(
                    "node {i} ({}) reads value {bad}, which is not defined before it",
                    n.name
                ));
            }
            for p in op_params(&n.op) {
                if p >= self.params.len() {
                    return fail(format!("node {i} ({}) refers to parameter {p}", n.name));
                }
            }
        }
        if self.output == 0 || self.output > self.nodes.len() {
            return fail(format!("output value {} is not a node output", self.output));
        }
        Ok(())
    }
}

/// The parameters an op reads.
pub fn op_params(op: &Op) -> Vec<ParamId> {
    match op {
        Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
            std::iter::once(*weight).chain(*bias).collect()
        }
        Op::BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            ..
        } => vec![*weight, *bias, *running_mean, *running_var],
        Op::LayerNorm { weight, bias, .. } => vec![*weight, *bias],
        _ => Vec::new(),
    }
}

/// A convolution's settings for [`GraphBuilder::conv_norm_act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Output channels.
    pub out: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Channel groups (the input channel count for depthwise).
    pub groups: usize,
    /// Whether the conv has a bias.
    pub bias: bool,
    /// Whether a BatchNorm follows.
    pub norm: bool,
}

/// Builds a [`Graph`], tracking the channel count (dimension 1) of every value so that
/// parameter shapes follow from the layers.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: Graph,
    channels: Vec<usize>,
    init: InitScheme,
    /// The first error, reported by [`finish`](Self::finish) (builders stay infallible to read).
    error: Option<String>,
}

/// How a builder initialises conv and linear weights when training from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitScheme {
    /// PyTorch's defaults (`kaiming_uniform_(a=√5)`: uniform ±1/√fan_in for weights and biases),
    /// which timm keeps for EfficientViT.
    #[default]
    Torch,
    /// timm's `_init_weight_goog` for the EfficientNet family: conv weights normal with std
    /// √(2 / fan_out) (fan_out = k·k·out / groups), conv biases zero, linear weights uniform
    /// ±1/√out_features, linear biases zero.
    Goog,
}

/// PyTorch's default initialisation of a conv or linear weight (`kaiming_uniform_(a=√5)`):
/// uniform with bound `1 / √fan_in`.
fn default_weight_init(fan_in: usize) -> Init {
    Init::Uniform {
        bound: 1.0 / (fan_in.max(1) as f64).sqrt(),
    }
}

impl GraphBuilder {
    /// A new graph whose input has `in_chans` channels.
    pub fn new(name: &str, in_chans: usize) -> Self {
        Self {
            graph: Graph {
                name: name.to_string(),
                in_chans,
                params: Vec::new(),
                nodes: Vec::new(),
                output: 0,
            },
            channels: vec![in_chans],
            init: InitScheme::Torch,
            error: None,
        }
    }

    /// Use `scheme` for the conv and linear layers added from now on.
    pub fn with_init(mut self, scheme: InitScheme) -> Self {
        self.init = scheme;
        self
    }

    /// The graph input.
    pub fn input(&self) -> ValueId {
        0
    }

    /// Channels (dimension 1) of a value.
    pub fn channels(&self, v: ValueId) -> usize {
        self.channels.get(v).copied().unwrap_or(0)
    }

    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
    }

    /// Add a parameter; returns its id.
    pub fn param(&mut self, name: &str, shape: Vec<usize>, kind: ParamKind, init: Init) -> ParamId {
        self.graph.params.push(Param {
            name: name.to_string(),
            shape,
            kind,
            init,
        });
        self.graph.params.len() - 1
    }

    /// Change the initialisation of the parameter called `name` (no-op if there is none).
    pub fn set_init(&mut self, name: &str, init: Init) {
        match self.graph.params.iter_mut().find(|p| p.name == name) {
            Some(p) => p.init = init,
            None => self.fail(format!("set_init: no parameter {name:?}")),
        }
    }

    /// Add a node producing a value with `channels` channels.
    pub fn node(&mut self, name: &str, op: Op, inputs: Vec<ValueId>, channels: usize) -> ValueId {
        self.graph.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
        });
        self.channels.push(channels);
        self.graph.nodes.len()
    }

    /// `scope.weight` `[out, in/groups, k, k]` (+ `scope.bias`), stride `stride`, same padding.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        scope: &str,
        x: ValueId,
        out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        bias: bool,
    ) -> ValueId {
        let cin = self.channels(x);
        if groups == 0 || !cin.is_multiple_of(groups) || !out.is_multiple_of(groups) {
            self.fail(format!(
                "{scope}: {cin} -> {out} channels cannot be split into {groups} groups"
            ));
        }
        let fan_in = cin / groups.max(1) * kernel * kernel;
        let (w_init, b_init) = match self.init {
            InitScheme::Torch => (default_weight_init(fan_in), default_weight_init(fan_in)),
            InitScheme::Goog => {
                let fan_out = kernel * kernel * out / groups.max(1);
                (
                    Init::Normal {
                        std: (2.0 / fan_out.max(1) as f64).sqrt(),
                    },
                    Init::Zeros,
                )
            }
        };
        let w = self.param(
            &format!("{scope}.weight"),
            vec![out, cin / groups.max(1), kernel, kernel],
            ParamKind::Trainable,
            w_init,
        );
        let b = bias.then(|| {
            self.param(
                &format!("{scope}.bias"),
                vec![out],
                ParamKind::Trainable,
                b_init,
            )
        });
        let pad = ((stride - 1) + (kernel - 1)) / 2;
        self.node(
            scope,
            Op::Conv2d {
                weight: w,
                bias: b,
                stride: [stride, stride],
                padding: [pad, pad],
                groups,
            },
            vec![x],
            out,
        )
    }

    /// BatchNorm over the channels of `x`: `scope.{weight,bias,running_mean,running_var}`.
    pub fn batch_norm(&mut self, scope: &str, x: ValueId, eps: f64) -> ValueId {
        let c = self.channels(x);
        let p = |b: &mut Self, n: &str, kind, init| {
            b.param(&format!("{scope}.{n}"), vec![c], kind, init)
        };
        let weight = p(self, "weight", ParamKind::Trainable, Init::Ones);
        let bias = p(self, "bias", ParamKind::Trainable, Init::Zeros);
        let running_mean = p(self, "running_mean", ParamKind::Buffer, Init::Zeros);
        let running_var = p(self, "running_var", ParamKind::Buffer, Init::Ones);
        self.node(
            scope,
            Op::BatchNorm {
                weight,
                bias,
                running_mean,
                running_var,
                eps,
                momentum: 0.1,
            },
            vec![x],
            c,
        )
    }

    /// An activation.
    pub fn act(&mut self, scope: &str, x: ValueId, a: Activation) -> ValueId {
        let c = self.channels(x);
        self.node(scope, Op::Act(a), vec![x], c)
    }

    /// timm's `ConvNormAct`: `scope.conv` (no bias), `scope.norm` (BatchNorm, eps 1e-5), optional act.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_bn_act(
        &mut self,
        scope: &str,
        x: ValueId,
        out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        act: Option<Activation>,
    ) -> ValueId {
        let spec = ConvSpec {
            out,
            kernel,
            stride,
            groups,
            bias: false,
            norm: true,
        };
        self.conv_norm_act(scope, x, spec, act)
    }

    /// timm's `ConvNormAct` in full: `scope.conv` (bias if asked), `scope.norm` if asked
    /// (BatchNorm, eps 1e-5), then the activation.
    pub fn conv_norm_act(
        &mut self,
        scope: &str,
        x: ValueId,
        spec: ConvSpec,
        act: Option<Activation>,
    ) -> ValueId {
        let y = self.conv(
            &format!("{scope}.conv"),
            x,
            spec.out,
            spec.kernel,
            spec.stride,
            spec.groups,
            spec.bias,
        );
        let y = if spec.norm {
            self.batch_norm(&format!("{scope}.norm"), y, 1e-5)
        } else {
            y
        };
        match act {
            Some(a) => self.act(scope, y, a),
            None => y,
        }
    }

    /// `a + b`.
    pub fn add(&mut self, scope: &str, a: ValueId, b: ValueId) -> ValueId {
        let c = self.channels(a).max(self.channels(b));
        self.node(scope, Op::Add, vec![a, b], c)
    }

    /// `a * b`.
    pub fn mul(&mut self, scope: &str, a: ValueId, b: ValueId) -> ValueId {
        let c = self.channels(a).max(self.channels(b));
        self.node(scope, Op::Mul, vec![a, b], c)
    }

    /// `[N, C, H, W] -> [N, C]`.
    pub fn global_avg_pool(&mut self, x: ValueId) -> ValueId {
        let c = self.channels(x);
        self.node("global_pool", Op::GlobalAvgPool, vec![x], c)
    }

    /// Mean over `axes`.
    pub fn reduce_mean(
        &mut self,
        scope: &str,
        x: ValueId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> ValueId {
        let c = self.channels(x);
        self.node(scope, Op::ReduceMean { axes, keepdim }, vec![x], c)
    }

    /// Sum over `axes`.
    pub fn reduce_sum(
        &mut self,
        scope: &str,
        x: ValueId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> ValueId {
        let c = self.channels(x);
        self.node(scope, Op::ReduceSum { axes, keepdim }, vec![x], c)
    }

    /// Softmax over `axis`.
    pub fn softmax(&mut self, scope: &str, x: ValueId, axis: usize) -> ValueId {
        let c = self.channels(x);
        self.node(scope, Op::Softmax { axis }, vec![x], c)
    }

    /// `[N, ...] -> [N, F]`; `features` is F.
    pub fn flatten(&mut self, scope: &str, x: ValueId, features: usize) -> ValueId {
        self.node(scope, Op::Flatten, vec![x], features)
    }

    /// `scope.weight` `[out, in]` (+ `scope.bias`).
    pub fn linear(&mut self, scope: &str, x: ValueId, out: usize, bias: bool) -> ValueId {
        let fin = self.channels(x);
        let (w_init, b_init) = match self.init {
            InitScheme::Torch => (default_weight_init(fin), default_weight_init(fin)),
            InitScheme::Goog => (
                Init::Uniform {
                    bound: 1.0 / (out.max(1) as f64).sqrt(),
                },
                Init::Zeros,
            ),
        };
        let weight = self.param(
            &format!("{scope}.weight"),
            vec![out, fin],
            ParamKind::Trainable,
            w_init,
        );
        let bias = bias.then(|| {
            self.param(
                &format!("{scope}.bias"),
                vec![out],
                ParamKind::Trainable,
                b_init,
            )
        });
        self.node(scope, Op::Linear { weight, bias }, vec![x], out)
    }

    /// LayerNorm over the features of `[N, F]`.
    pub fn layer_norm(&mut self, scope: &str, x: ValueId, eps: f64) -> ValueId {
        let f = self.channels(x);
        let weight = self.param(
            &format!("{scope}.weight"),
            vec![f],
            ParamKind::Trainable,
            Init::Ones,
        );
        let bias = self.param(
            &format!("{scope}.bias"),
            vec![f],
            ParamKind::Trainable,
            Init::Zeros,
        );
        self.node(scope, Op::LayerNorm { weight, bias, eps }, vec![x], f)
    }

    /// Concatenate along channels.
    pub fn concat_channels(&mut self, scope: &str, xs: Vec<ValueId>) -> ValueId {
        let c = xs.iter().map(|&v| self.channels(v)).sum();
        self.node(scope, Op::Concat { axis: 1 }, xs, c)
    }

    /// EfficientViT linear attention (see [`Op::LinearAttention`]).
    pub fn linear_attention(&mut self, scope: &str, x: ValueId, dim: usize, eps: f64) -> ValueId {
        let c = self.channels(x);
        if dim == 0 || !c.is_multiple_of(3 * dim) {
            self.fail(format!("{scope}: {c} channels are not groups of 3 x {dim}"));
        }
        self.node(scope, Op::LinearAttention { dim, eps }, vec![x], c / 3)
    }

    /// Dropout (identity at inference).
    pub fn dropout(&mut self, scope: &str, x: ValueId, p: f64) -> ValueId {
        let c = self.channels(x);
        self.node(scope, Op::Dropout { p }, vec![x], c)
    }

    /// Finish with `output` as the network output, validating the graph.
    pub fn finish(mut self, output: ValueId) -> Result<Graph, GraphError> {
        if let Some(reason) = self.error.take() {
            return Err(GraphError {
                graph: self.graph.name,
                reason,
            });
        }
        self.graph.output = output;
        self.graph.validate()?;
        Ok(self.graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_names_and_shapes() {
        let mut b = GraphBuilder::new("t", 3);
        let x = b.input();
        let y = b.conv_bn_act("stem", x, 16, 3, 2, 1, Some(Activation::Relu));
        let z = b.conv("dw", y, 16, 5, 1, 16, true);
        let s = b.add("res", y, z);
        let p = b.global_avg_pool(s);
        let o = b.linear("fc", p, 4, true);
        let g = b.finish(o).expect("valid");
        assert_eq!(g.param("dw.weight").expect("dw").shape, vec![16, 1, 5, 5]);
        assert_eq!(
            g.param("stem.norm.running_var").expect("bn").kind,
            ParamKind::Buffer
        );
        assert_eq!(
            g.trainable_count(),
            16 * 27 + 32 + 16 * 25 + 16 + 4 * 16 + 4
        );
        match &g.nodes[3].op {
            Op::Conv2d { padding, .. } => assert_eq!(*padding, [2, 2]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_graphs_are_refused() {
        let mut b = GraphBuilder::new("bad", 3);
        let x = b.input();
        let _ = b.conv("c", x, 8, 3, 1, 2, false);
        let err = b.finish(1).expect_err("groups");
        assert!(err.reason.contains("groups"), "{err}");

        let mut b = GraphBuilder::new("dup", 1);
        let x = b.input();
        let y = b.conv("c", x, 4, 1, 1, 1, false);
        let y = b.conv("c", y, 4, 1, 1, 1, false);
        let err = b.finish(y).expect_err("duplicate");
        assert!(err.reason.contains("twice"), "{err}");
    }
}

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

/// The logistic function `1 / (1 + e^-x)` ([`Activation::Sigmoid`]), turning a logit into a
/// probability: the one definition every binary uses. Stable for any finite input (no overflow
/// for large |x|); NaN stays NaN.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
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

impl Init {
    /// `n` initial values drawn from `rng` (in order, so they depend only on its seed).
    pub fn sample(self, n: usize, rng: &mut crate::rng::Rng) -> Vec<f32> {
        match self {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Uniform { bound } => (0..n).map(|_| rng.range(-bound, bound) as f32).collect(),
            Init::Normal { std } => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
        }
    }
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
    /// Stochastic depth on a residual branch: in training each sample's value is zeroed with
    /// probability `p` and the others scaled by `1 / (1 - p)`; identity in eval and in ONNX.
    DropPath {
        /// Drop probability of a sample.
        p: f64,
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
pub enum GraphError {
    /// Names, indices or the output are wrong, or a layer's settings are impossible.
    #[error("invalid graph {graph}: {reason}")]
    Invalid {
        /// The graph's name.
        graph: String,
        /// What is wrong.
        reason: String,
    },
    /// A node's inputs have shapes its op cannot take.
    #[error("graph {graph}, node {index} ({node}): {reason}")]
    Shape {
        /// The graph's name.
        graph: String,
        /// Node index.
        index: usize,
        /// The node's scope name.
        node: String,
        /// What is wrong.
        reason: String,
    },
}

impl GraphError {
    /// What is wrong, without the graph's name.
    pub fn reason(&self) -> &str {
        match self {
            Self::Invalid { reason, .. } | Self::Shape { reason, .. } => reason,
        }
    }
}

/// A dimension of a value: `Some(n)` when known, `None` when dynamic (the batch, and the height
/// and width of a graph whose input size is not fixed).
pub type Dim = Option<usize>;

/// The shape of a value, outermost dimension first.
pub type Shape = Vec<Dim>;

/// A shape for messages: `[?, 64, 7, 7]`.
pub fn show_shape(s: &[Dim]) -> String {
    let parts: Vec<String> = s
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
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
            Err(GraphError::Invalid {
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
            for p in n.op.params() {
                if p >= self.params.len() {
                    return fail(format!("node {i} ({}) refers to parameter {p}", n.name));
                }
            }
        }
        if self.output == 0 || self.output > self.nodes.len() {
            return fail(format!("output value {} is not a node output", self.output));
        }
        self.infer_shapes(None, None).map(|_| ())
    }

    /// The input's shape: `[batch, in_chans, height, width]`.
    pub fn input_shape(&self, height: Dim, width: Dim) -> Shape {
        vec![None, Some(self.in_chans), height, width]
    }

    /// The shape of every value (index = value id) for an input of `height` x `width` (`None`:
    /// dynamic), checking that each node can take its inputs. Call [`validate`](Self::validate)
    /// first on a graph that was not made by a [`GraphBuilder`].
    pub fn infer_shapes(&self, height: Dim, width: Dim) -> Result<Vec<Shape>, GraphError> {
        let mut shapes: Vec<Shape> = vec![self.input_shape(height, width)];
        for (i, node) in self.nodes.iter().enumerate() {
            let ins: Vec<&[Dim]> = node
                .inputs
                .iter()
                .map(|&v| shapes.get(v).map_or(&[][..], Vec::as_slice))
                .collect();
            let s =
                node.op
                    .output_shape(&self.params, &ins)
                    .map_err(|reason| GraphError::Shape {
                        graph: self.name.clone(),
                        index: i,
                        node: node.name.clone(),
                        reason,
                    })?;
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// For each value, the index of the last node that reads it; `usize::MAX` for the output,
    /// which is never freed. An interpreter drops a value after its last use.
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.nodes.len() + 1];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                if let Some(l) = last.get_mut(v) {
                    *l = i;
                }
            }
        }
        if let Some(l) = last.get_mut(self.output) {
            *l = usize::MAX;
        }
        last
    }

    /// The parameters of the layers that produce the logits: walking back from the output
    /// through parameter-free ops (activations, softmax, products, sums over time, flatten,
    /// dropout), the first Conv2d or Linear layer on every path. Sorted.
    pub fn classifier_params(&self) -> Vec<ParamId> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![self.output];
        while let Some(v) = stack.pop() {
            if v == 0 || !seen.insert(v) {
                continue;
            }
            let Some(node) = self.nodes.get(v - 1) else {
                continue;
            };
            match &node.op {
                Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                    out.push(*weight);
                    out.extend(*bias);
                }
                Op::Act(_)
                | Op::Add
                | Op::Mul
                | Op::Softmax { .. }
                | Op::ReduceSum { .. }
                | Op::Flatten
                | Op::Concat { .. }
                | Op::Dropout { .. }
                | Op::DropPath { .. } => stack.extend(node.inputs.iter().copied()),
                Op::BatchNorm { .. }
                | Op::LayerNorm { .. }
                | Op::GlobalAvgPool
                | Op::ReduceMean { .. }
                | Op::LinearAttention { .. } => {}
            }
        }
        out.sort_unstable();
        out
    }

    /// The weight of the first Conv2d node (the stem, which reads the input channels).
    pub fn first_conv_weight(&self) -> Option<ParamId> {
        self.nodes.iter().find_map(|n| match &n.op {
            Op::Conv2d { weight, .. } => Some(*weight),
            _ => None,
        })
    }
}

impl Op {
    /// The op's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "Conv2d",
            Op::BatchNorm { .. } => "BatchNorm",
            Op::Act(_) => "activation",
            Op::Add => "Add",
            Op::Mul => "Mul",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::ReduceSum { .. } => "ReduceSum",
            Op::Softmax { .. } => "Softmax",
            Op::Flatten => "Flatten",
            Op::Linear { .. } => "Linear",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::Concat { .. } => "Concat",
            Op::LinearAttention { .. } => "LinearAttention",
            Op::Dropout { .. } => "Dropout",
            Op::DropPath { .. } => "DropPath",
        }
    }

    /// The parameters the op reads.
    pub fn params(&self) -> Vec<ParamId> {
        match self {
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

    /// The shape of the op's output for inputs of shapes `ins`, with `params` the graph's
    /// parameters; an error says why the op cannot take those inputs. The shape rules of every
    /// op live here, and only here: the builder applies them as each node is added, the ONNX
    /// emitter for a concrete input size.
    pub fn output_shape(&self, params: &[Param], ins: &[&[Dim]]) -> Result<Shape, String> {
        let pshape = |id: usize| -> Result<&[usize], String> {
            params
                .get(id)
                .map(|p| p.shape.as_slice())
                .ok_or_else(|| format!("refers to parameter {id}, which does not exist"))
        };
        let arity = |n: usize| {
            if ins.len() == n {
                Ok(())
            } else {
                Err(format!("takes {n} input(s), got {}", ins.len()))
            }
        };
        let rank = |s: &[Dim], r: usize| {
            if s.len() == r {
                Ok(())
            } else {
                Err(format!("needs a rank-{r} input, got {}", show_shape(s)))
            }
        };
        let same = |what: &str, have: Dim, want: usize| match have {
            Some(h) if h != want => Err(format!("{what} is {h}, the parameters need {want}")),
            _ => Ok(()),
        };
        let numel = |id: usize| pshape(id).map(|s| s.iter().product::<usize>());
        match self {
            Op::Conv2d {
                weight,
                stride,
                padding,
                groups,
                ..
            } => {
                arity(1)?;
                let x = ins[0];
                rank(x, 4)?;
                let w = pshape(*weight)?;
                if w.len() != 4 {
                    return Err(format!("conv weight has shape {w:?}"));
                }
                same("input channels", x[1], w[1] * groups)?;
                let out = |d: Dim, k: usize, s: usize, p: usize| -> Result<Dim, String> {
                    match d {
                        None => Ok(None),
                        Some(n) if n + 2 * p < k => Err(format!(
                            "spatial size {n} (+2×{p} padding) is smaller than the kernel {k}"
                        )),
                        Some(n) => Ok(Some((n + 2 * p - k) / s.max(1) + 1)),
                    }
                };
                Ok(vec![
                    x[0],
                    Some(w[0]),
                    out(x[2], w[2], stride[0], padding[0])?,
                    out(x[3], w[3], stride[1], padding[1])?,
                ])
            }
            Op::BatchNorm { weight, .. } => {
                arity(1)?;
                let x = ins[0];
                if x.len() < 2 {
                    return Err(format!("needs [N, C, ...], got {}", show_shape(x)));
                }
                same("channels", x[1], numel(*weight)?)?;
                Ok(x.to_vec())
            }
            Op::Act(_) | Op::Dropout { .. } | Op::DropPath { .. } => {
                arity(1)?;
                Ok(ins[0].to_vec())
            }
            Op::Add | Op::Mul => {
                arity(2)?;
                broadcast(ins[0], ins[1])
            }
            Op::GlobalAvgPool => {
                arity(1)?;
                rank(ins[0], 4)?;
                Ok(vec![ins[0][0], ins[0][1]])
            }
            Op::ReduceMean { axes, keepdim } | Op::ReduceSum { axes, keepdim } => {
                arity(1)?;
                let x = ins[0];
                if let Some(a) = axes.iter().find(|&&a| a == 0 || a >= x.len()) {
                    return Err(format!(
                        "axis {a} is not a non-batch axis of {}",
                        show_shape(x)
                    ));
                }
                if axes.is_empty() {
                    return Err("no axes to reduce".into());
                }
                Ok(x.iter()
                    .enumerate()
                    .filter_map(|(i, &d)| match (axes.contains(&i), keepdim) {
                        (false, _) => Some(d),
                        (true, true) => Some(Some(1)),
                        (true, false) => None,
                    })
                    .collect())
            }
            Op::Softmax { axis } => {
                arity(1)?;
                if *axis >= ins[0].len() {
                    return Err(format!(
                        "axis {axis} is out of range for {}",
                        show_shape(ins[0])
                    ));
                }
                Ok(ins[0].to_vec())
            }
            Op::Flatten => {
                arity(1)?;
                let x = ins[0];
                let features = x
                    .get(1..)
                    .unwrap_or_default()
                    .iter()
                    .try_fold(1usize, |acc, d| d.map(|n| acc * n));
                Ok(vec![x.first().copied().flatten(), features])
            }
            Op::Linear { weight, .. } => {
                arity(1)?;
                rank(ins[0], 2)?;
                let w = pshape(*weight)?;
                if w.len() != 2 {
                    return Err(format!("linear weight has shape {w:?}"));
                }
                same("input features", ins[0][1], w[1])?;
                Ok(vec![ins[0][0], Some(w[0])])
            }
            Op::LayerNorm { weight, .. } => {
                arity(1)?;
                let x = ins[0];
                let last = x.last().copied().flatten();
                same("normalised features", last, numel(*weight)?)?;
                Ok(x.to_vec())
            }
            Op::Concat { axis } => {
                let first = ins.first().ok_or("takes at least one input")?;
                if *axis == 0 || *axis >= first.len() {
                    return Err(format!("cannot concatenate along axis {axis}"));
                }
                let mut out = first.to_vec();
                for s in &ins[1..] {
                    if s.len() != first.len() {
                        return Err(format!(
                            "inputs of different rank: {} and {}",
                            show_shape(first),
                            show_shape(s)
                        ));
                    }
                    for (i, d) in s.iter().enumerate() {
                        if i == *axis {
                            out[i] = out[i].zip(*d).map(|(a, b)| a + b);
                        } else {
                            out[i] = merge(out[i], *d).ok_or_else(|| {
                                format!(
                                    "inputs {} and {} differ outside axis {axis}",
                                    show_shape(first),
                                    show_shape(s)
                                )
                            })?;
                        }
                    }
                }
                Ok(out)
            }
            Op::LinearAttention { dim, .. } => {
                arity(1)?;
                let x = ins[0];
                rank(x, 4)?;
                match x[1] {
                    Some(c) if *dim > 0 && c % (3 * dim) == 0 => {
                        Ok(vec![x[0], Some(c / 3), x[2], x[3]])
                    }
                    other => Err(format!(
                        "needs a known channel count divisible by 3 × {dim}, got {other:?}"
                    )),
                }
            }
        }
    }
}

/// Two dimensions that must agree; `None` (dynamic) agrees with anything.
fn merge(a: Dim, b: Dim) -> Option<Dim> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => None,
        (Some(x), _) | (_, Some(x)) => Some(Some(x)),
        (None, None) => Some(None),
    }
}

/// NumPy broadcasting of two shapes.
fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Shape, String> {
    let n = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            Some(1)
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (Some(1), d) | (d, Some(1)) => Ok(d),
            (x, y) => merge(x, y).ok_or_else(|| {
                format!(
                    "shapes {} and {} do not broadcast",
                    show_shape(a),
                    show_shape(b)
                )
            }),
        })
        .collect()
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

/// Builds a [`Graph`], computing the shape of every value as its node is added
/// ([`Op::output_shape`], with the height and width dynamic), so that parameter shapes follow
/// from the layers and a node that cannot take its inputs fails where it is built.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: Graph,
    shapes: Vec<Shape>,
    init: InitScheme,
    /// The first error, reported by [`finish`](Self::finish) (builders stay infallible to read).
    error: Option<String>,
    /// The first node that cannot take its inputs: index, name, why.
    shape_error: Option<(usize, String, String)>,
    /// Largest stochastic-depth rate, and the DropPath nodes whose rate `finish` sets.
    drop_path_rate: f64,
    drop_paths: Vec<usize>,
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
            shapes: vec![vec![None, Some(in_chans), None, None]],
            init: InitScheme::Torch,
            error: None,
            shape_error: None,
            drop_path_rate: 0.0,
            drop_paths: Vec::new(),
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

    /// Channels (dimension 1) of a value; 0 when unknown.
    pub fn channels(&self, v: ValueId) -> usize {
        self.shapes
            .get(v)
            .and_then(|s| s.get(1).copied().flatten())
            .unwrap_or(0)
    }

    /// The shape of a value (height and width dynamic).
    pub fn shape(&self, v: ValueId) -> &[Dim] {
        self.shapes.get(v).map_or(&[], Vec::as_slice)
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

    /// Add a node; its output shape is computed from its inputs' shapes, and a node that cannot
    /// take them is reported by [`finish`](Self::finish).
    pub fn node(&mut self, name: &str, op: Op, inputs: Vec<ValueId>) -> ValueId {
        let index = self.graph.nodes.len();
        let shape = match inputs.iter().find(|&&v| v >= self.shapes.len()) {
            Some(bad) => Err(format!("reads value {bad}, which is not defined before it")),
            None => {
                let ins: Vec<&[Dim]> = inputs.iter().map(|&v| self.shapes[v].as_slice()).collect();
                op.output_shape(&self.graph.params, &ins)
            }
        };
        let shape = shape.unwrap_or_else(|reason| {
            if self.shape_error.is_none() {
                self.shape_error = Some((index, name.to_string(), reason));
            }
            Vec::new()
        });
        self.graph.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
        });
        self.shapes.push(shape);
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
        )
    }

    /// An activation.
    pub fn act(&mut self, scope: &str, x: ValueId, a: Activation) -> ValueId {
        self.node(scope, Op::Act(a), vec![x])
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
        self.node(scope, Op::Add, vec![a, b])
    }

    /// `a * b`.
    pub fn mul(&mut self, scope: &str, a: ValueId, b: ValueId) -> ValueId {
        self.node(scope, Op::Mul, vec![a, b])
    }

    /// `[N, C, H, W] -> [N, C]`.
    pub fn global_avg_pool(&mut self, x: ValueId) -> ValueId {
        self.node("global_pool", Op::GlobalAvgPool, vec![x])
    }

    /// Mean over `axes`.
    pub fn reduce_mean(
        &mut self,
        scope: &str,
        x: ValueId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> ValueId {
        self.node(scope, Op::ReduceMean { axes, keepdim }, vec![x])
    }

    /// Sum over `axes`.
    pub fn reduce_sum(
        &mut self,
        scope: &str,
        x: ValueId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> ValueId {
        self.node(scope, Op::ReduceSum { axes, keepdim }, vec![x])
    }

    /// Softmax over `axis`.
    pub fn softmax(&mut self, scope: &str, x: ValueId, axis: usize) -> ValueId {
        self.node(scope, Op::Softmax { axis }, vec![x])
    }

    /// `[N, ...] -> [N, F]`; `features` is F. When the input's trailing dimensions are dynamic
    /// here (height or width), F cannot be computed yet: `features` is taken as a promise,
    /// checked by [`Graph::infer_shapes`] once the input size is known.
    pub fn flatten(&mut self, scope: &str, x: ValueId, features: usize) -> ValueId {
        let v = self.node(scope, Op::Flatten, vec![x]);
        match self.shapes[v].get(1).copied() {
            Some(Some(f)) if f != features => self.fail(format!(
                "{scope}: flattening {} gives {f} features, not {features}",
                show_shape(self.shape(x))
            )),
            Some(None) => self.shapes[v][1] = Some(features),
            _ => {}
        }
        v
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
        self.node(scope, Op::Linear { weight, bias }, vec![x])
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
        self.node(scope, Op::LayerNorm { weight, bias, eps }, vec![x])
    }

    /// Concatenate along channels.
    pub fn concat_channels(&mut self, scope: &str, xs: Vec<ValueId>) -> ValueId {
        self.node(scope, Op::Concat { axis: 1 }, xs)
    }

    /// EfficientViT linear attention (see [`Op::LinearAttention`]).
    pub fn linear_attention(&mut self, scope: &str, x: ValueId, dim: usize, eps: f64) -> ValueId {
        let c = self.channels(x);
        if dim == 0 || !c.is_multiple_of(3 * dim) {
            self.fail(format!("{scope}: {c} channels are not groups of 3 x {dim}"));
        }
        self.node(scope, Op::LinearAttention { dim, eps }, vec![x])
    }

    /// `branch + shortcut`, a residual connection: with stochastic depth on
    /// ([`with_drop_path`](Self::with_drop_path)), the branch first goes through a
    /// [`Op::DropPath`] whose rate rises linearly with the residual's depth in the network.
    pub fn residual(&mut self, scope: &str, branch: ValueId, shortcut: ValueId) -> ValueId {
        let branch = if self.drop_path_rate > 0.0 {
            let v = self.node(
                &format!("{scope}.drop_path"),
                Op::DropPath { p: 0.0 },
                vec![branch],
            );
            self.drop_paths.push(v - 1);
            v
        } else {
            branch
        };
        self.add(scope, branch, shortcut)
    }

    /// Stochastic depth of rate `rate` on every [`residual`](Self::residual) added from now on:
    /// the `i`-th of `n` residual branches is dropped with probability `rate * (i + 1) / n`
    /// (timm's linear rule), set by [`finish`](Self::finish). 0 adds no node at all, so the
    /// graph (and its ONNX export) is the plain one.
    pub fn with_drop_path(mut self, rate: f64) -> Self {
        if !(0.0..1.0).contains(&rate) {
            self.fail(format!("drop path rate {rate} is not in [0, 1)"));
        }
        self.drop_path_rate = rate;
        self
    }

    /// Dropout (identity at inference).
    pub fn dropout(&mut self, scope: &str, x: ValueId, p: f64) -> ValueId {
        self.node(scope, Op::Dropout { p }, vec![x])
    }

    /// Finish with `output` as the network output, validating the graph.
    pub fn finish(mut self, output: ValueId) -> Result<Graph, GraphError> {
        if let Some(reason) = self.error.take() {
            return Err(GraphError::Invalid {
                graph: self.graph.name,
                reason,
            });
        }
        if let Some((index, node, reason)) = self.shape_error.take() {
            return Err(GraphError::Shape {
                graph: self.graph.name,
                index,
                node,
                reason,
            });
        }
        let n = self.drop_paths.len();
        for (i, &node) in self.drop_paths.iter().enumerate() {
            let p = self.drop_path_rate * (i + 1) as f64 / n as f64;
            self.graph.nodes[node].op = Op::DropPath { p };
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
        assert!(err.reason().contains("groups"), "{err}");

        let mut b = GraphBuilder::new("dup", 1);
        let x = b.input();
        let y = b.conv("c", x, 4, 1, 1, 1, false);
        let y = b.conv("c", y, 4, 1, 1, 1, false);
        let err = b.finish(y).expect_err("duplicate");
        assert!(err.reason().contains("twice"), "{err}");
    }

    #[test]
    fn sigmoid_values() {
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(sigmoid(0.0), 0.5));
        assert!(close(sigmoid(2.0), 1.0 / (1.0 + (-2.0f32).exp())));
        assert!(close(sigmoid(-2.0), 1.0 - sigmoid(2.0)));
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!(sigmoid(f32::NAN).is_nan());
    }

    #[test]
    fn broadcasting() {
        let s = |v: &[usize]| v.iter().map(|&d| Some(d)).collect::<Vec<_>>();
        assert_eq!(
            broadcast(&s(&[2, 3, 4, 4]), &s(&[2, 3, 1, 1])).expect("ok"),
            s(&[2, 3, 4, 4])
        );
        assert!(broadcast(&s(&[2, 3]), &s(&[2, 4])).is_err());
        assert_eq!(
            broadcast(&[None, Some(3)], &s(&[1, 3])).expect("ok"),
            vec![None, Some(3)]
        );
    }

    #[test]
    fn a_node_that_cannot_take_its_inputs_fails_where_it_is_built() {
        let mut b = GraphBuilder::new("mismatch", 3);
        let x = b.input();
        let a = b.conv("a", x, 8, 3, 1, 1, false);
        let c = b.conv("c", x, 16, 3, 1, 1, false);
        let s = b.add("sum", a, c);
        assert!(b.shape(s).is_empty(), "no shape for a failed node");
        let p = b.global_avg_pool(a);
        let o = b.linear("fc", p, 2, true);
        match b.finish(o).expect_err("8 and 16 channels do not add") {
            GraphError::Shape {
                index,
                node,
                reason,
                ..
            } => {
                assert_eq!((index, node.as_str()), (2, "sum"));
                assert!(reason.contains("do not broadcast"), "{reason}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn shapes_follow_the_input_size_once_it_is_known() {
        let mut b = GraphBuilder::new("t", 1);
        let x = b.input();
        let y = b.conv_bn_act("stem", x, 8, 3, 2, 1, Some(Activation::Relu));
        assert_eq!(b.shape(y), [None, Some(8), None, None]);
        let p = b.reduce_mean("pool", y, vec![2, 3], true);
        let f = b.flatten("flat", p, 8);
        let o = b.linear("fc", f, 4, true);
        let g = b.finish(o).expect("valid");
        let shapes = g.infer_shapes(Some(224), Some(161)).expect("shapes");
        assert_eq!(shapes[y], [None, Some(8), Some(112), Some(81)]);
        assert_eq!(shapes[g.output], [None, Some(4)]);
        // A flatten whose feature count is wrong is caught when the size is known.
        let mut b = GraphBuilder::new("t", 1);
        let x = b.input();
        let y = b.conv("c", x, 2, 1, 1, 1, false);
        let f = b.flatten("flat", y, 8);
        let o = b.linear("fc", f, 1, false);
        let g = b.finish(o).expect("dynamic H, W: the promise is kept");
        let e = g
            .infer_shapes(Some(3), Some(3))
            .expect_err("2 x 3 x 3 is not 8");
        assert!(e.to_string().contains("input features is 18"), "{e}");
    }

    #[test]
    fn graph_queries() {
        let mut b = GraphBuilder::new("q", 1);
        let x = b.input();
        let y = b.conv("stem", x, 4, 3, 1, 1, false);
        let p = b.global_avg_pool(y);
        let d = b.dropout("drop", p, 0.2);
        let o = b.linear("head", d, 3, true);
        let g = b.finish(o).expect("valid");
        assert_eq!(g.first_conv_weight(), Some(0));
        let names: Vec<&str> = g
            .classifier_params()
            .iter()
            .map(|&i| g.params[i].name.as_str())
            .collect();
        assert_eq!(names, ["head.weight", "head.bias"]);
        // Value 1 (the conv) is last read by node 1 (the pool); the output is never freed.
        assert_eq!(g.last_uses(), vec![0, 1, 2, 3, usize::MAX]);
        assert_eq!(g.nodes[1].op.name(), "GlobalAvgPool");
    }
}

//! The ONNX emitter: an IR [`Graph`] and its weights (and optionally its [`Card`]) become an ONNX
//! model, opset [`OPSET`], IR version [`IR_VERSION`].
//!
//! Every IR parameter becomes an initializer with exactly the parameter's name (the safetensors
//! key), so an ONNX file can be matched against its checkpoint by name. Constants the
//! decompositions need (Clip bounds, Reshape shapes, Slice bounds, the attention epsilon) are
//! further initializers whose names start with `/const/`, which no IR parameter name can take.
//!
//! The graph input is [`INPUT`], `[batch, C, H, W]` with a symbolic batch; `H` and `W` are fixed
//! from the card's `input_shape` when a card is given and symbolic (`height`, `width`)
//! otherwise. The output is [`OUTPUT`], `[batch, classes]`. With a card, `metadata_props` holds
//! its JSON under [`ONNX_CARD_KEY`] and the labels as a JSON array under [`ONNX_LABELS_KEY`].
//!
//! | IR op | ONNX |
//! | --- | --- |
//! | `Conv2d` | `Conv` (kernel_shape, strides, pads, group, dilations 1) |
//! | `BatchNorm` | `BatchNormalization` (inference form, epsilon) |
//! | `Act(Relu / Sigmoid / Tanh)` | `Relu` / `Sigmoid` / `Tanh` |
//! | `Act(Relu6)` | `Clip(x, 0, 6)` (opset ≥ 11 takes the bounds as inputs) |
//! | `Act(Hardswish)` | `HardSwish` |
//! | `Act(Hardsigmoid)` | `HardSigmoid(alpha = 1/6, beta = 0.5)` |
//! | `Act(Silu)` | `Sigmoid` then `Mul` |
//! | `Add`, `Mul` | `Add`, `Mul` |
//! | `GlobalAvgPool` | `GlobalAveragePool` then `Flatten(axis = 1)` |
//! | `ReduceMean` | `ReduceMean` (opset 17: `axes` attribute) |
//! | `ReduceSum` | `ReduceSum` (opset ≥ 13: `axes` as an int64 input) |
//! | `Softmax` | `Softmax(axis)` |
//! | `Flatten` | `Flatten(axis = 1)` |
//! | `Linear` | `Gemm(transB = 1)` |
//! | `LayerNorm` | `LayerNormalization(axis = -1, epsilon)` |
//! | `Concat` | `Concat(axis)` |
//! | `Dropout`, `DropPath` | nothing (identity at inference) |
//! | `LinearAttention` | `Reshape`, `Transpose`, `Slice`, `Relu`, `Pad` (a column of ones on v), `MatMul`, `Add` (eps), `Div`, then `Reshape` back to `[N, C, H, W]` (a constant shape when the card fixes H, W; else `Shape`/`Concat` build it); all fp32 |

use std::collections::{BTreeSet, HashMap, HashSet};

use birdclef_models::card::{Card, ONNX_CARD_KEY, ONNX_LABELS_KEY};
use birdclef_models::checkpoint::NamedTensor;
use birdclef_models::ir::{show_shape, Activation, Dim, Graph, GraphError, Node, Op};
use prost::Message;

use crate::onnx_proto::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX operator set the emitter writes.
pub const OPSET: i64 = 17;
/// The ONNX IR version the emitter writes (ONNX Runtime 1.31 reads up to 13).
pub const IR_VERSION: i64 = 8;
/// `producer_name` of every emitted model.
pub const PRODUCER: &str = "birdclef-export";
/// Name of the graph input.
pub const INPUT: &str = "input";
/// Name of the graph output.
pub const OUTPUT: &str = "logits";

/// Why a graph could not be emitted or a model's metadata not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The graph breaks the IR's rules.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Weights and graph disagree.
    #[error("weights do not fit graph {graph}: {problems}")]
    Weights {
        /// The graph's name.
        graph: String,
        /// Every missing, unexpected or mis-shaped tensor.
        problems: String,
    },
    /// A node's inputs have shapes it cannot take.
    #[error("graph {graph}, node {index} ({name}): {reason}")]
    Shape {
        /// The graph's name.
        graph: String,
        /// Node index.
        index: usize,
        /// Node scope name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The card does not describe this graph.
    #[error("card {card:?} does not fit graph {graph}: {reason}")]
    Card {
        /// The card's name.
        card: String,
        /// The graph's name.
        graph: String,
        /// What differs.
        reason: String,
    },
    /// Bytes that are not an ONNX model.
    #[error("not an ONNX model")]
    NotOnnx(#[source] prost::DecodeError),
    /// The model card in the metadata cannot be read back.
    #[error("metadata_props[{ONNX_CARD_KEY:?}]")]
    CardMetadata(#[source] Box<birdclef_models::card::CardError>),
}

/// Emit `graph` with `weights` (exactly the graph's parameters, by name and shape) as an ONNX
/// model; see the module documentation.
pub fn emit_model(
    graph: &Graph,
    weights: &[NamedTensor],
    card: Option<&Card>,
) -> Result<ModelProto, EmitError> {
    graph.validate()?;
    check_weights(graph, weights)?;
    let (height, width) = match card {
        Some(c) => {
            if c.input_shape[0] != graph.in_chans {
                return Err(card_error(
                    c,
                    graph,
                    format!(
                        "the card's input has {} channels, the graph {}",
                        c.input_shape[0], graph.in_chans
                    ),
                ));
            }
            (Some(c.input_shape[1]), Some(c.input_shape[2]))
        }
        None => (None, None),
    };
    let shapes = graph.infer_shapes(height, width)?;
    let out_shape = &shapes[graph.output];
    let classes = match out_shape.as_slice() {
        [_, Some(classes)] => *classes,
        other => {
            return Err(EmitError::Shape {
                graph: graph.name.clone(),
                index: graph.output.saturating_sub(1),
                name: "output".into(),
                reason: format!(
                    "the output must be [batch, classes] with a known class count, got {}",
                    show_shape(other)
                ),
            })
        }
    };
    if let Some(c) = card {
        if !c.labels.is_empty() && c.labels.len() != classes {
            return Err(card_error(
                c,
                graph,
                format!(
                    "the card has {} labels, the graph {classes} outputs",
                    c.labels.len()
                ),
            ));
        }
    }

    let mut e = Emitter::default();
    e.reserve(INPUT);
    e.reserve(OUTPUT);
    for p in &graph.params {
        e.reserve(&p.name);
    }
    let by_name: HashMap<&str, &NamedTensor> =
        weights.iter().map(|t| (t.name.as_str(), t)).collect();
    for p in &graph.params {
        if let Some(t) = by_name.get(p.name.as_str()) {
            e.initializers.push(f32_tensor(&p.name, &p.shape, &t.data));
        }
    }

    let mut names: Vec<String> = vec![INPUT.to_string()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let v = i + 1;
        let target = (v == graph.output).then(|| OUTPUT.to_string());
        let out = e.node_ir(graph, node, i, &names, &shapes, target);
        names.push(out);
    }

    let dim = |d: Dim, param: &str| tensor_shape_proto::Dimension {
        value: Some(match d {
            Some(n) => tensor_shape_proto::dimension::Value::DimValue(n as i64),
            None => tensor_shape_proto::dimension::Value::DimParam(param.to_string()),
        }),
        denotation: None,
    };
    let input = value_info(
        INPUT,
        vec![
            dim(None, "batch"),
            dim(Some(graph.in_chans), ""),
            dim(height, "height"),
            dim(width, "width"),
        ],
    );
    let output = value_info(OUTPUT, vec![dim(None, "batch"), dim(Some(classes), "")]);

    let mut metadata_props = Vec::new();
    if let Some(c) = card {
        let labels = serde_json::to_string(&c.labels).unwrap_or_else(|_| "[]".to_string());
        metadata_props.push(entry(ONNX_CARD_KEY, &c.to_json()));
        metadata_props.push(entry(ONNX_LABELS_KEY, &labels));
    }
    let doc = match card {
        Some(c) => format!(
            "{} ({}), {} classes; model card in metadata_props[{ONNX_CARD_KEY:?}]",
            c.name, graph.name, classes
        ),
        None => format!("{}, {classes} classes", graph.name),
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some(PRODUCER.to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(doc),
        graph: Some(GraphProto {
            node: e.nodes,
            name: Some(graph.name.clone()),
            initializer: e.initializers,
            doc_string: None,
            input: vec![input],
            output: vec![output],
            value_info: Vec::new(),
        }),
        metadata_props,
    })
}

/// [`emit_model`], serialised to bytes.
pub fn emit(
    graph: &Graph,
    weights: &[NamedTensor],
    card: Option<&Card>,
) -> Result<Vec<u8>, EmitError> {
    Ok(emit_model(graph, weights, card)?.encode_to_vec())
}

/// Decode ONNX bytes.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, EmitError> {
    ModelProto::decode(bytes).map_err(EmitError::NotOnnx)
}

/// The value of `metadata_props[key]`, if present.
pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model
        .metadata_props
        .iter()
        .find(|p| p.key.as_deref() == Some(key))
        .and_then(|p| p.value.as_deref())
}

/// The model card stored in an ONNX model's metadata (`None` when the model has none).
pub fn read_card(model: &ModelProto) -> Result<Option<Card>, EmitError> {
    match metadata(model, ONNX_CARD_KEY) {
        None => Ok(None),
        Some(json) => Card::from_json(json)
            .map(Some)
            .map_err(|e| EmitError::CardMetadata(Box::new(e))),
    }
}

/// The distinct operator types a model uses, sorted.
pub fn op_types(model: &ModelProto) -> BTreeSet<String> {
    model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .filter_map(|n| n.op_type.clone())
        .collect()
}

fn card_error(c: &Card, graph: &Graph, reason: String) -> EmitError {
    EmitError::Card {
        card: c.name.clone(),
        graph: graph.name.clone(),
        reason,
    }
}

/// Weights must be exactly the graph's parameters, each with the parameter's shape and as many
/// values as the shape holds; the error lists every problem.
fn check_weights(graph: &Graph, weights: &[NamedTensor]) -> Result<(), EmitError> {
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, &NamedTensor> = HashMap::new();
    for t in weights {
        if seen.insert(t.name.as_str(), t).is_some() {
            problems.push(format!("{} appears twice", t.name));
        }
        if t.data.len() != t.shape.iter().product::<usize>() {
            problems.push(format!(
                "{} has shape {:?} but {} values",
                t.name,
                t.shape,
                t.data.len()
            ));
        }
    }
    for p in &graph.params {
        match seen.get(p.name.as_str()) {
            None => problems.push(format!("missing {} {:?}", p.name, p.shape)),
            Some(t) if t.shape != p.shape => problems.push(format!(
                "{} has shape {:?}, the graph needs {:?}",
                p.name, t.shape, p.shape
            )),
            Some(_) => {}
        }
    }
    let names: HashSet<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
    for t in weights {
        if !names.contains(t.name.as_str()) {
            problems.push(format!("unexpected {} {:?}", t.name, t.shape));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EmitError::Weights {
            graph: graph.name.clone(),
            problems: problems.join("; "),
        })
    }
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    }
}

fn value_info(name: &str, dims: Vec<tensor_shape_proto::Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.to_string()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::INT64),
        name: Some(name.to_string()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Accumulates nodes and initializers, handing out unique names.
#[derive(Default)]
struct Emitter {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    used: HashSet<String>,
    consts: HashMap<String, String>,
}

impl Emitter {
    fn reserve(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// `base`, or `base_2`, `base_3`, … if taken; the result is reserved.
    fn unique(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }

    /// Add one ONNX node; returns its (single) output name: `output` if given, else a fresh one.
    fn op(
        &mut self,
        scope: &str,
        op_type: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
        output: Option<String>,
    ) -> String {
        let name = self.unique(&format!("{scope}/{op_type}"));
        let out = match output {
            Some(o) => o,
            None => self.unique(&format!("{name}_output_0")),
        };
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: Some(name),
            op_type: Some(op_type.to_string()),
            domain: None,
            attribute,
            doc_string: None,
        });
        out
    }

    /// A shared int64 constant initializer.
    fn const_i64(&mut self, hint: &str, shape: &[usize], values: &[i64]) -> String {
        let key = format!("i64{shape:?}{values:?}");
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.unique(&format!("/const/{hint}"));
        self.initializers.push(i64_tensor(&name, shape, values));
        self.consts.insert(key, name.clone());
        name
    }

    /// A shared float scalar constant initializer.
    fn const_f32_scalar(&mut self, hint: &str, value: f32) -> String {
        let key = format!("f32[]{:08x}", value.to_bits());
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.unique(&format!("/const/{hint}"));
        self.initializers.push(f32_tensor(&name, &[], &[value]));
        self.consts.insert(key, name.clone());
        name
    }

    /// A 1-D int64 constant.
    fn ints(&mut self, hint: &str, values: &[i64]) -> String {
        self.const_i64(hint, &[values.len()], values)
    }

    /// `Slice(x, [start], [end], [axis])`.
    fn slice(
        &mut self,
        scope: &str,
        x: &str,
        axis: i64,
        start: i64,
        end: i64,
        out: Option<String>,
    ) -> String {
        let s = self.ints(&format!("slice_start_{start}"), &[start]);
        let e = self.ints(&format!("slice_end_{end}"), &[end]);
        let a = self.ints(&format!("slice_axis_{axis}"), &[axis]);
        self.op(scope, "Slice", vec![x.into(), s, e, a], vec![], out)
    }

    /// Emit one IR node (its inputs were checked by shape inference); returns the name of the
    /// value it produces (`target` when given).
    fn node_ir(
        &mut self,
        graph: &Graph,
        node: &Node,
        index: usize,
        names: &[String],
        shapes: &[Vec<Dim>],
        target: Option<String>,
    ) -> String {
        let scope = if node.name.is_empty() {
            format!("node{index}")
        } else {
            node.name.clone()
        };
        let scope = scope.as_str();
        let pname = |id: usize| graph.params[id].name.clone();
        let input = |k: usize| names[node.inputs[k]].clone();
        let x = input(0);
        match &node.op {
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                groups,
            } => {
                let w = &graph.params[*weight].shape;
                let mut inputs = vec![x, pname(*weight)];
                inputs.extend(bias.map(pname));
                let attrs = vec![
                    attr_ints("dilations", &[1, 1]),
                    attr_int("group", *groups as i64),
                    attr_ints("kernel_shape", &ints(&w[2..4])),
                    attr_ints(
                        "pads",
                        &ints(&[padding[0], padding[1], padding[0], padding[1]]),
                    ),
                    attr_ints("strides", &ints(stride)),
                ];
                self.op(scope, "Conv", inputs, attrs, target)
            }
            Op::BatchNorm {
                weight,
                bias,
                running_mean,
                running_var,
                eps,
                ..
            } => {
                let inputs = vec![
                    x,
                    pname(*weight),
                    pname(*bias),
                    pname(*running_mean),
                    pname(*running_var),
                ];
                let attrs = vec![attr_float("epsilon", *eps as f32)];
                self.op(scope, "BatchNormalization", inputs, attrs, target)
            }
            Op::Act(a) => match a {
                Activation::Relu => self.op(scope, "Relu", vec![x], vec![], target),
                Activation::Sigmoid => self.op(scope, "Sigmoid", vec![x], vec![], target),
                Activation::Tanh => self.op(scope, "Tanh", vec![x], vec![], target),
                Activation::Hardswish => self.op(scope, "HardSwish", vec![x], vec![], target),
                Activation::Hardsigmoid => {
                    let attrs = vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)];
                    self.op(scope, "HardSigmoid", vec![x], attrs, target)
                }
                Activation::Relu6 => {
                    let lo = self.const_f32_scalar("zero", 0.0);
                    let hi = self.const_f32_scalar("six", 6.0);
                    self.op(scope, "Clip", vec![x, lo, hi], vec![], target)
                }
                Activation::Silu => {
                    let s = self.op(scope, "Sigmoid", vec![x.clone()], vec![], None);
                    self.op(scope, "Mul", vec![x, s], vec![], target)
                }
            },
            Op::Add => self.op(scope, "Add", vec![x, input(1)], vec![], target),
            Op::Mul => self.op(scope, "Mul", vec![x, input(1)], vec![], target),
            Op::GlobalAvgPool => {
                let p = self.op(scope, "GlobalAveragePool", vec![x], vec![], None);
                self.op(scope, "Flatten", vec![p], vec![attr_int("axis", 1)], target)
            }
            Op::ReduceMean { axes, keepdim } => {
                let attrs = vec![
                    attr_ints("axes", &ints(axes)),
                    attr_int("keepdims", i64::from(*keepdim)),
                ];
                self.op(scope, "ReduceMean", vec![x], attrs, target)
            }
            Op::ReduceSum { axes, keepdim } => {
                let a = self.ints("axes", &ints(axes));
                let attrs = vec![attr_int("keepdims", i64::from(*keepdim))];
                self.op(scope, "ReduceSum", vec![x, a], attrs, target)
            }
            Op::Softmax { axis } => {
                let attrs = vec![attr_int("axis", *axis as i64)];
                self.op(scope, "Softmax", vec![x], attrs, target)
            }
            Op::Flatten => self.op(scope, "Flatten", vec![x], vec![attr_int("axis", 1)], target),
            Op::Linear { weight, bias } => {
                let mut inputs = vec![x, pname(*weight)];
                inputs.extend(bias.map(pname));
                self.op(scope, "Gemm", inputs, vec![attr_int("transB", 1)], target)
            }
            Op::LayerNorm { weight, bias, eps } => {
                let inputs = vec![x, pname(*weight), pname(*bias)];
                let attrs = vec![attr_int("axis", -1), attr_float("epsilon", *eps as f32)];
                self.op(scope, "LayerNormalization", inputs, attrs, target)
            }
            Op::Concat { axis } => {
                let inputs = node.inputs.iter().map(|&v| names[v].clone()).collect();
                let attrs = vec![attr_int("axis", *axis as i64)];
                self.op(scope, "Concat", inputs, attrs, target)
            }
            Op::Dropout { .. } | Op::DropPath { .. } => match target {
                // The graph output must be a node output: keep the name with an Identity.
                Some(t) => self.op(scope, "Identity", vec![x], vec![], Some(t)),
                None => x,
            },
            Op::LinearAttention { dim, eps } => {
                let s = &shapes[node.inputs[0]];
                let (channels, hw) = (s[1].unwrap_or(0), s[2].zip(s[3]));
                self.linear_attention(scope, &x, channels, hw, *dim, *eps, target)
            }
        }
    }

    /// EfficientViT's ReLU linear attention on `x` `[N, G·3·dim, H, W]` (see
    /// `birdclef_models::ir::Op::LinearAttention`), as timm's `LiteMLA` computes it. `hw` is the
    /// spatial size when it is fixed (a card was given): the final Reshape then takes a constant
    /// shape; otherwise H and W are read from `x` with `Shape`.
    #[allow(clippy::too_many_arguments)]
    fn linear_attention(
        &mut self,
        scope: &str,
        x: &str,
        channels: usize,
        hw: Option<(usize, usize)>,
        dim: usize,
        eps: f64,
        target: Option<String>,
    ) -> String {
        let groups = (channels / (3 * dim).max(1)) as i64;
        let d = dim as i64;
        // [N, G, 3·dim, H·W] -> [N, G, H·W, 3·dim]
        let shape = self.ints("attn_qkv_shape", &[0, groups, 3 * d, -1]);
        let r = self.op(scope, "Reshape", vec![x.into(), shape], vec![], None);
        let perm = [attr_ints("perm", &[0, 1, 3, 2])];
        let t = self.op(scope, "Transpose", vec![r], perm.to_vec(), None);
        let q = self.slice(scope, &t, 3, 0, d, None);
        let k = self.slice(scope, &t, 3, d, 2 * d, None);
        let v = self.slice(scope, &t, 3, 2 * d, 3 * d, None);
        let q = self.op(scope, "Relu", vec![q], vec![], None);
        let k = self.op(scope, "Relu", vec![k], vec![], None);
        // v | 1: one column of ones after the last axis.
        let pads = self.ints("attn_pad_v", &[0, 0, 0, 0, 0, 0, 0, 1]);
        let one = self.const_f32_scalar("one", 1.0);
        let v1 = self.op(
            scope,
            "Pad",
            vec![v, pads, one],
            vec![AttributeProto {
                name: Some("mode".into()),
                r#type: Some(attribute_type::STRING),
                s: Some(b"constant".to_vec()),
                ..Default::default()
            }],
            None,
        );
        let kt = self.op(scope, "Transpose", vec![k], perm.to_vec(), None);
        let kv = self.op(scope, "MatMul", vec![kt, v1], vec![], None);
        let o = self.op(scope, "MatMul", vec![q, kv], vec![], None);
        let num = self.slice(scope, &o, 3, 0, d, None);
        let den = self.slice(scope, &o, 3, d, d + 1, None);
        let e = self.const_f32_scalar("attn_eps", eps as f32);
        let den = self.op(scope, "Add", vec![den, e], vec![], None);
        let o = self.op(scope, "Div", vec![num, den], vec![], None);
        // [N, G, H·W, dim] -> [N, G, dim, H·W] -> [N, G·dim, H, W]
        let o = self.op(scope, "Transpose", vec![o], perm.to_vec(), None);
        let out_shape = match hw {
            Some((h, w)) => self.ints(
                &format!("attn_out_shape_{}x{h}x{w}", groups * d),
                &[0, groups * d, h as i64, w as i64],
            ),
            None => {
                let hw = self.op(
                    scope,
                    "Shape",
                    vec![x.into()],
                    vec![attr_int("start", 2), attr_int("end", 4)],
                    None,
                );
                let nc = self.ints(
                    &format!("attn_out_channels_{}", groups * d),
                    &[0, groups * d],
                );
                self.op(
                    scope,
                    "Concat",
                    vec![nc, hw],
                    vec![attr_int("axis", 0)],
                    None,
                )
            }
        };
        self.op(scope, "Reshape", vec![o, out_shape], vec![], target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use birdclef_models::ir::{GraphBuilder, ParamKind};

    fn weights_for(g: &Graph) -> Vec<NamedTensor> {
        g.params
            .iter()
            .enumerate()
            .map(|(i, p)| NamedTensor {
                name: p.name.clone(),
                shape: p.shape.clone(),
                data: (0..p.numel())
                    .map(|j| match p.kind {
                        ParamKind::Buffer if p.name.ends_with("running_var") => 1.0,
                        _ => ((i * 31 + j * 7) % 13) as f32 / 13.0 - 0.5,
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn initializers_carry_the_parameter_names_and_ops_are_mapped() {
        let g = birdclef_models::nets::build_spec("efficientvit_b0", 1, 5).expect("graph");
        let m = emit_model(&g, &weights_for(&g), None).expect("emit");
        let graph = m.graph.as_ref().expect("graph");
        let inits: HashSet<&str> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        for p in &g.params {
            assert!(inits.contains(p.name.as_str()), "{}", p.name);
        }
        assert!(inits
            .iter()
            .all(|n| g.param(n).is_some() || n.starts_with("/const/")));
        let ops = op_types(&m);
        for op in [
            "Conv",
            "BatchNormalization",
            "HardSwish",
            "MatMul",
            "Pad",
            "Div",
            "Gemm",
            "LayerNormalization",
        ] {
            assert!(ops.contains(op), "{op} missing from {ops:?}");
        }
        assert!(!ops.contains("Dropout") && !ops.contains("Identity"));
        assert_eq!(graph.output[0].name.as_deref(), Some(OUTPUT));
        assert_eq!(graph.node.last().expect("node").output[0], OUTPUT);
        assert_eq!(m.opset_import[0].version, Some(OPSET));
        assert!(m.metadata_props.is_empty());
    }

    #[test]
    fn weights_that_do_not_fit_are_listed() {
        let g = birdclef_models::nets::build_spec("mnasnet_100", 1, 3).expect("graph");
        let mut w = weights_for(&g);
        w.retain(|t| t.name != "conv_stem.weight");
        w[0].shape = vec![1, 2, 3];
        w.push(NamedTensor {
            name: "extra".into(),
            shape: vec![1],
            data: vec![0.0],
        });
        let err = emit(&g, &w, None).expect_err("mismatch").to_string();
        assert!(err.contains("missing conv_stem.weight"), "{err}");
        assert!(err.contains("unexpected extra"), "{err}");
        assert!(err.contains("has shape [1, 2, 3]"), "{err}");
    }

    #[test]
    fn dropout_at_the_output_becomes_identity_and_shapes_are_checked() {
        let mut b = GraphBuilder::new("t", 2);
        let x = b.input();
        let y = b.conv("c", x, 4, 3, 2, 1, true);
        let y = b.act("c", y, Activation::Relu6);
        let y = b.act("c", y, Activation::Silu);
        let y = b.act("c", y, Activation::Hardsigmoid);
        let y = b.global_avg_pool(y);
        let y = b.dropout("drop", y, 0.5);
        let g = b.finish(y).expect("graph");
        let m = emit_model(&g, &weights_for(&g), None).expect("emit");
        let graph = m.graph.expect("graph");
        let last = graph.node.last().expect("node");
        assert_eq!(last.op_type.as_deref(), Some("Identity"));
        assert_eq!(last.output[0], OUTPUT);
        // Node names are unique although the IR reuses the scope "c".
        let names: HashSet<_> = graph.node.iter().filter_map(|n| n.name.clone()).collect();
        assert_eq!(names.len(), graph.node.len());

        let mut card =
            Card::frontend_only("c", birdclef_models::frontend::FrontendConfig::kefir128());
        card.labels = vec!["a".into()];
        let err = emit(&g, &weights_for(&g), Some(&card)).expect_err("channels");
        assert!(err.to_string().contains("channels"), "{err}");
    }
}

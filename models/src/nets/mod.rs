//! The architectures, written once in the [`crate::ir`] layer graph.
//!
//! | name | family | reference |
//! | --- | --- | --- |
//! | `efficientvit_b0` | [`efficientvit`] | timm `efficientvit_b0` (the student) |
//! | `efficientnet_b0` | [`efficientnet`] | timm `efficientnet_b0` (teacher) |
//! | `mnasnet_100` | [`efficientnet`] | timm `mnasnet_100` (teacher) |
//!
//! Any of them takes a [`Head::Sed`] instead of the classifier: sound-event-detection attention
//! pooling over time, as the BirdCLEF 2023 seed and 2025 winners use.

pub mod efficientnet;
pub mod efficientvit;

use serde::{Deserialize, Serialize};

use crate::ir::{Activation, Graph, GraphBuilder, GraphError, Init, ValueId};

/// The architectures [`build`] knows.
pub const ARCHITECTURES: [&str; 3] = ["efficientvit_b0", "efficientnet_b0", "mnasnet_100"];

/// The network's top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// The reference classifier (global average pool and the family's Linear layers).
    #[default]
    Classifier,
    /// SED attention pooling over time (see [`sed_head`]).
    Sed,
}

/// An architecture that cannot be built as asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArchError {
    /// No input channel or no class.
    #[error(
        "{name}: need at least one input channel and one class (got {in_chans} and {classes})"
    )]
    Size {
        /// The architecture.
        name: String,
        /// Input channels asked for.
        in_chans: usize,
        /// Classes asked for.
        classes: usize,
    },
    /// A name [`build`] does not know.
    #[error("unknown architecture {name:?}; known: {}", ARCHITECTURES.join(", "))]
    Unknown {
        /// The name given.
        name: String,
    },
    /// A card without an architecture.
    #[error("the card names no architecture")]
    Unnamed,
    /// A head suffix other than `+sed`.
    #[error("architecture {spec:?}: unknown head {head:?} (only \"+sed\" is known)")]
    Head {
        /// The spec given.
        spec: String,
        /// The unknown suffix.
        head: String,
    },
    /// A family's block string that does not parse.
    #[error("block {block:?}: {reason}")]
    Block {
        /// The block string.
        block: String,
        /// What is wrong.
        reason: String,
    },
    /// The graph the family wrote breaks the IR's rules.
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Names that the same architecture with the reference classifier head has and `graph` does not
/// (its SED head replaces them): such tensors in a timm file are ignored when importing, not an
/// error. Empty for a graph [`build`] does not know.
pub fn replaced_head_params(graph: &Graph) -> std::collections::HashSet<String> {
    let Ok(reference) = build(&graph.name, graph.in_chans, 1, Head::Classifier) else {
        return Default::default();
    };
    reference
        .params
        .into_iter()
        .map(|p| p.name)
        .filter(|n| graph.param(n).is_none())
        .collect()
}

/// How to build an architecture, besides its name and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ArchOptions {
    /// The network's top.
    pub head: Head,
    /// Stochastic depth on every residual branch, rising linearly to this rate (0: none, and no
    /// node for it in the graph). Training only: parameters, eval outputs and exported ONNX are
    /// the same as without.
    pub drop_path_rate: f64,
}

/// Build a named architecture for `in_chans` input channels and `num_classes` outputs.
pub fn build(
    name: &str,
    in_chans: usize,
    num_classes: usize,
    head: Head,
) -> Result<Graph, ArchError> {
    build_with(
        name,
        in_chans,
        num_classes,
        &ArchOptions {
            head,
            ..ArchOptions::default()
        },
    )
}

/// [`build`] with all the options.
pub fn build_with(
    name: &str,
    in_chans: usize,
    num_classes: usize,
    opts: &ArchOptions,
) -> Result<Graph, ArchError> {
    if in_chans == 0 || num_classes == 0 {
        return Err(ArchError::Size {
            name: name.to_string(),
            in_chans,
            classes: num_classes,
        });
    }
    match name {
        "efficientvit_b0" => efficientvit::efficientvit(
            name,
            &efficientvit::EfficientVitConfig::b0(),
            in_chans,
            num_classes,
            opts,
        ),
        "efficientnet_b0" => efficientnet::efficientnet(
            name,
            &efficientnet::EfficientNetConfig::b0(),
            in_chans,
            num_classes,
            opts,
        ),
        "mnasnet_100" => efficientnet::efficientnet(
            name,
            &efficientnet::EfficientNetConfig::mnasnet_100(),
            in_chans,
            num_classes,
            opts,
        ),
        other => Err(ArchError::Unknown {
            name: other.to_string(),
        }),
    }
}

/// Build from an architecture spec as stored in model cards: a name from [`ARCHITECTURES`],
/// optionally followed by `+sed` for the SED head (e.g. `efficientnet_b0+sed`).
pub fn build_spec(spec: &str, in_chans: usize, num_classes: usize) -> Result<Graph, ArchError> {
    build_spec_with(spec, in_chans, num_classes, 0.0)
}

/// [`build_spec`] with stochastic depth ([`ArchOptions::drop_path_rate`]).
pub fn build_spec_with(
    spec: &str,
    in_chans: usize,
    num_classes: usize,
    drop_path_rate: f64,
) -> Result<Graph, ArchError> {
    let (name, head) = parse_spec(spec)?;
    build_with(
        name,
        in_chans,
        num_classes,
        &ArchOptions {
            head,
            drop_path_rate,
        },
    )
}

/// Split an architecture spec into its name and head.
pub fn parse_spec(spec: &str) -> Result<(&str, Head), ArchError> {
    match spec.split_once('+') {
        None => Ok((spec, Head::Classifier)),
        Some((name, "sed")) => Ok((name, Head::Sed)),
        Some((_, other)) => Err(ArchError::Head {
            spec: spec.to_string(),
            head: other.to_string(),
        }),
    }
}

/// The spec string of a name and head (inverse of [`parse_spec`]).
pub fn spec_string(name: &str, head: Head) -> String {
    match head {
        Head::Classifier => name.to_string(),
        Head::Sed => format!("{name}+sed"),
    }
}

/// SED head on backbone features `[N, C, F, T]` (frequency × time): mean over frequency, then two
/// 1×1 convs over time, `sed.att` (attention) and `sed.cla` (per-frame class logits); the clip's
/// logits are the attention-weighted sum over time, `Σ_t softmax_t(tanh(att)) · cla`.
/// The frame logits' attention pooling keeps the output a logit, like the classifier's.
pub fn sed_head(b: &mut GraphBuilder, x: ValueId, num_classes: usize, dropout: f64) -> ValueId {
    let x = b.reduce_mean("sed.freq_pool", x, vec![2], true);
    let x = b.dropout("sed.dropout", x, dropout);
    let att = b.conv("sed.att", x, num_classes, 1, 1, 1, true);
    let att = b.act("sed.att_tanh", att, Activation::Tanh);
    let att = b.softmax("sed.att_softmax", att, 3);
    let cla = b.conv("sed.cla", x, num_classes, 1, 1, 1, true);
    // Xavier-uniform weights and zero biases, as SED heads usually start: the family's conv
    // initialisation (e.g. EfficientNet's std sqrt(2 / fan_out)) is made for wide conv layers and
    // would start a 1280 -> classes projection with logits in the tens.
    let channels = b.channels(x);
    for layer in ["sed.att", "sed.cla"] {
        let bound = (6.0 / (channels + num_classes) as f64).sqrt();
        b.set_init(&format!("{layer}.weight"), Init::Uniform { bound });
        b.set_init(&format!("{layer}.bias"), Init::Zeros);
    }
    let weighted = b.mul("sed.weighted", att, cla);
    let pooled = b.reduce_sum("sed.time_pool", weighted, vec![2, 3], false);
    b.flatten("sed.flatten", pooled, num_classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_builds_with_both_heads() {
        for name in ARCHITECTURES {
            for head in [Head::Classifier, Head::Sed] {
                let g = build(name, 1, 182, head).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(g.trainable_count() > 100_000, "{name}");
            }
        }
        assert!(build("resnet50", 1, 3, Head::Classifier).is_err());
        let g = build_spec("mnasnet_100+sed", 3, 5).expect("spec");
        assert!(g.param("sed.att.weight").is_some());
        assert!(build_spec("mnasnet_100+crnn", 3, 5).is_err());
        assert_eq!(spec_string("mnasnet_100", Head::Sed), "mnasnet_100+sed");
        assert!(build("efficientvit_b0", 1, 0, Head::Classifier).is_err());
    }

    #[test]
    fn stochastic_depth_adds_nodes_but_no_parameters() {
        for name in ARCHITECTURES {
            let plain = build_spec(name, 1, 5).expect("plain");
            let deep = build_spec_with(name, 1, 5, 0.2).expect("drop path");
            assert_eq!(plain.params, deep.params, "{name}");
            assert!(plain
                .nodes
                .iter()
                .all(|n| !matches!(n.op, crate::ir::Op::DropPath { .. })));
            let rates: Vec<f64> = deep
                .nodes
                .iter()
                .filter_map(|n| match n.op {
                    crate::ir::Op::DropPath { p } => Some(p),
                    _ => None,
                })
                .collect();
            assert!(
                rates.len() >= 5,
                "{name}: {} residual branches",
                rates.len()
            );
            assert!(rates.windows(2).all(|w| w[0] < w[1]), "{name}: {rates:?}");
            assert!(
                (rates[rates.len() - 1] - 0.2).abs() < 1e-12,
                "{name}: {rates:?}"
            );
        }
        assert!(build_spec_with("mnasnet_100", 1, 5, 1.0).is_err());
    }

    #[test]
    fn efficientvit_b0_has_timms_parameter_count() {
        // timm efficientvit_b0 with 182 classes: 2.36 M parameters (GUIDE section 4); with 3 input
        // channels and 1000 classes timm reports 3.39 M.
        let g = build("efficientvit_b0", 1, 182, Head::Classifier).expect("build");
        let n = g.trainable_count() as f64 / 1e6;
        assert!((n - 2.36).abs() < 0.01, "{n} M parameters");
    }
}

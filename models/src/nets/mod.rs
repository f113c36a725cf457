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
#[error("{0}")]
pub struct NetError(pub String);

impl From<GraphError> for NetError {
    fn from(e: GraphError) -> Self {
        NetError(e.to_string())
    }
}

/// Build a named architecture for `in_chans` input channels and `num_classes` outputs.
pub fn build(
    name: &str,
    in_chans: usize,
    num_classes: usize,
    head: Head,
) -> Result<Graph, NetError> {
    if in_chans == 0 || num_classes == 0 {
        return Err(NetError(format!(
            "{name}: need at least one input channel and one class (got {in_chans} and {num_classes})"
        )));
    }
    match name {
        "efficientvit_b0" => efficientvit::efficientvit(
            name,
            &efficientvit::EfficientVitConfig::b0(),
            in_chans,
            num_classes,
            head,
        ),
        "efficientnet_b0" => efficientnet::efficientnet(
            name,
            &efficientnet::EfficientNetConfig::b0(),
            in_chans,
            num_classes,
            head,
        ),
        "mnasnet_100" => efficientnet::efficientnet(
            name,
            &efficientnet::EfficientNetConfig::mnasnet_100(),
            in_chans,
            num_classes,
            head,
        ),
        other => Err(NetError(format!(
            "unknown architecture {other:?}; known: {}",
            ARCHITECTURES.join(", ")
        ))),
    }
}

/// Build from an architecture spec as stored in model cards: a name from [`ARCHITECTURES`],
/// optionally followed by `+sed` for the SED head (e.g. `efficientnet_b0+sed`).
pub fn build_spec(spec: &str, in_chans: usize, num_classes: usize) -> Result<Graph, NetError> {
    let (name, head) = parse_spec(spec)?;
    build(name, in_chans, num_classes, head)
}

/// Split an architecture spec into its name and head.
pub fn parse_spec(spec: &str) -> Result<(&str, Head), NetError> {
    match spec.split_once('+') {
        None => Ok((spec, Head::Classifier)),
        Some((name, "sed")) => Ok((name, Head::Sed)),
        Some((_, other)) => Err(NetError(format!(
            "architecture {spec:?}: unknown head {other:?} (only \"+sed\" is known)"
        ))),
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
    fn efficientvit_b0_has_timms_parameter_count() {
        // timm efficientvit_b0 with 182 classes: 2.36 M parameters (GUIDE section 4); with 3 input
        // channels and 1000 classes timm reports 3.39 M.
        let g = build("efficientvit_b0", 1, 182, Head::Classifier).expect("build");
        let n = g.trainable_count() as f64 / 1e6;
        assert!((n - 2.36).abs() < 0.01, "{n} M parameters");
    }
}

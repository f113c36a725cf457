//! The EfficientNet family as timm's `efficientnet.py` builds it: EfficientNet-B0 and MnasNet-B1
//! (`mnasnet_100`), teachers of BirdCLEF pipelines.
//!
//! Papers: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs" (ICML 2019); Tan et al.,
//! "MnasNet: Platform-Aware Neural Architecture Search for Mobile" (CVPR 2019). Reference
//! implementation: timm (`_gen_efficientnet`, `_gen_mnasnet_b1`), whose `state_dict()` key names
//! these parameters carry (`conv_stem`, `bn1`, `blocks.<stage>.<block>.conv_pw` …, `conv_head`,
//! `bn2`, `classifier`).
//!
//! Stages are described in timm's compact block notation, e.g. `ir_r2_k3_s2_e6_c24_se0.25`: an
//! inverted residual (`ir`) or depthwise-separable (`ds`) block, repeated `r` times, kernel `k`,
//! stride `s` (first repeat only), expansion `e`, `c` output channels, squeeze-excitation ratio
//! `se` (relative to the block's input channels), `noskip` to drop the residual.
//! Channels are scaled by a width multiplier and rounded to multiples of 8; repeats by a depth
//! multiplier (rounded up), as timm does.

use super::{ArchError, ArchOptions, Head};
use crate::ir::{Activation, Graph, GraphBuilder, InitScheme, ValueId};

/// One stage of blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDef {
    /// `true` for an inverted residual, `false` for depthwise-separable.
    pub inverted: bool,
    /// Repeats.
    pub repeats: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Stride of the first repeat.
    pub stride: usize,
    /// Expansion ratio.
    pub expand: usize,
    /// Output channels before the width multiplier.
    pub channels: usize,
    /// Squeeze-excitation ratio (of the block's input channels); 0 for none.
    pub se_ratio: f64,
    /// Residual connection when shapes allow.
    pub skip: bool,
}

impl BlockDef {
    /// Parse timm's block notation (`ds_r1_k3_s1_e1_c16_se0.25`, `ir_r3_k5_s2_e3_c40`, `_noskip`).
    pub fn parse(text: &str) -> Result<Self, ArchError> {
        let bad = |why: &str| ArchError::Block {
            block: text.to_string(),
            reason: why.to_string(),
        };
        let mut parts = text.split('_');
        let inverted = match parts.next() {
            Some("ir") => true,
            Some("ds") => false,
            _ => return Err(bad("must start with ir or ds")),
        };
        let mut def = BlockDef {
            inverted,
            repeats: 1,
            kernel: 3,
            stride: 1,
            expand: 1,
            channels: 0,
            se_ratio: 0.0,
            skip: true,
        };
        for p in parts {
            let num = |s: &str| {
                s.parse::<usize>()
                    .map_err(|_| bad(&format!("bad number in {p:?}")))
            };
            if p == "noskip" {
                def.skip = false;
            } else if let Some(v) = p.strip_prefix("se") {
                def.se_ratio = v.parse().map_err(|_| bad("bad se ratio"))?;
            } else if let Some(v) = p.strip_prefix('r') {
                def.repeats = num(v)?;
            } else if let Some(v) = p.strip_prefix('k') {
                def.kernel = num(v)?;
            } else if let Some(v) = p.strip_prefix('s') {
                def.stride = num(v)?;
            } else if let Some(v) = p.strip_prefix('e') {
                def.expand = num(v)?;
            } else if let Some(v) = p.strip_prefix('c') {
                def.channels = num(v)?;
            } else {
                return Err(bad(&format!("unknown part {p:?}")));
            }
        }
        if def.channels == 0 || def.repeats == 0 || def.kernel.is_multiple_of(2) || def.stride == 0
        {
            return Err(bad("needs c > 0, r > 0, odd k and s > 0"));
        }
        Ok(def)
    }
}

/// A network of the family.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetConfig {
    /// Stages in block notation.
    pub stages: Vec<String>,
    /// Stem channels before the width multiplier.
    pub stem: usize,
    /// Head (feature) channels.
    pub features: usize,
    /// Whether the width multiplier also scales the head (timm's EfficientNet generator passes
    /// a rounded `num_features`; its MnasNet generator keeps 1280 whatever the multiplier).
    pub scale_features: bool,
    /// Width multiplier.
    pub channel_multiplier: f64,
    /// Depth multiplier.
    pub depth_multiplier: f64,
    /// Activation of every block, the stem and the head.
    pub act: Activation,
    /// BatchNorm epsilon.
    pub bn_eps: f64,
    /// Dropout before the classifier (training only).
    pub dropout: f64,
}

impl EfficientNetConfig {
    /// `efficientnet_b0` (SiLU, SE 0.25, symmetric padding, BN eps 1e-5).
    pub fn b0() -> Self {
        Self {
            stages: [
                "ds_r1_k3_s1_e1_c16_se0.25",
                "ir_r2_k3_s2_e6_c24_se0.25",
                "ir_r2_k5_s2_e6_c40_se0.25",
                "ir_r3_k3_s2_e6_c80_se0.25",
                "ir_r3_k5_s1_e6_c112_se0.25",
                "ir_r4_k5_s2_e6_c192_se0.25",
                "ir_r1_k3_s1_e6_c320_se0.25",
            ]
            .map(String::from)
            .to_vec(),
            stem: 32,
            features: 1280,
            scale_features: true,
            channel_multiplier: 1.0,
            depth_multiplier: 1.0,
            act: Activation::Silu,
            bn_eps: 1e-5,
            dropout: 0.2,
        }
    }

    /// `mnasnet_100` (MnasNet-B1: ReLU, no SE).
    pub fn mnasnet_100() -> Self {
        Self {
            stages: [
                "ds_r1_k3_s1_c16_noskip",
                "ir_r3_k3_s2_e3_c24",
                "ir_r3_k5_s2_e3_c40",
                "ir_r3_k5_s2_e6_c80",
                "ir_r2_k3_s1_e6_c96",
                "ir_r4_k5_s2_e6_c192",
                "ir_r1_k3_s1_e6_c320_noskip",
            ]
            .map(String::from)
            .to_vec(),
            stem: 32,
            features: 1280,
            scale_features: false,
            channel_multiplier: 1.0,
            depth_multiplier: 1.0,
            act: Activation::Relu,
            bn_eps: 1e-5,
            dropout: 0.2,
        }
    }

    fn round_channels(&self, c: usize) -> usize {
        make_divisible(c as f64 * self.channel_multiplier, 8)
    }
}

/// timm's `make_divisible(v, 8)`: nearest multiple of `divisor`, at least `divisor`, and never
/// more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut n = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (n as f64) < 0.9 * v {
        n += divisor;
    }
    n
}

/// BatchNorm + optional activation under timm's `BatchNormAct2d` name (`scope.weight`, …).
fn bn_act(
    b: &mut GraphBuilder,
    scope: &str,
    x: ValueId,
    eps: f64,
    act: Option<Activation>,
) -> ValueId {
    let y = b.batch_norm(scope, x, eps);
    match act {
        Some(a) => b.act(scope, y, a),
        None => y,
    }
}

/// Squeeze-excitation: mean over H, W; 1×1 reduce (bias) + act; 1×1 expand (bias) + sigmoid;
/// multiply.
fn squeeze_excite(
    b: &mut GraphBuilder,
    scope: &str,
    x: ValueId,
    reduced: usize,
    act: Activation,
) -> ValueId {
    let c = b.channels(x);
    let s = b.reduce_mean(&format!("{scope}.pool"), x, vec![2, 3], true);
    let s = b.conv(&format!("{scope}.conv_reduce"), s, reduced, 1, 1, 1, true);
    let s = b.act(&format!("{scope}.act1"), s, act);
    let s = b.conv(&format!("{scope}.conv_expand"), s, c, 1, 1, 1, true);
    let s = b.act(&format!("{scope}.gate"), s, Activation::Sigmoid);
    b.mul(scope, x, s)
}

/// Build the backbone and head.
pub fn efficientnet(
    name: &str,
    cfg: &EfficientNetConfig,
    in_chans: usize,
    num_classes: usize,
    opts: &ArchOptions,
) -> Result<Graph, ArchError> {
    let defs = cfg
        .stages
        .iter()
        .map(|s| BlockDef::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let act = cfg.act;
    // timm initialises this family with _init_weight_goog.
    let mut b = GraphBuilder::new(name, in_chans)
        .with_init(InitScheme::Goog)
        .with_drop_path(opts.drop_path_rate);
    let x = b.input();
    let stem = cfg.round_channels(cfg.stem);
    let x = b.conv("conv_stem", x, stem, 3, 2, 1, false);
    let mut x = bn_act(&mut b, "bn1", x, cfg.bn_eps, Some(act));
    for (si, def) in defs.iter().enumerate() {
        let out = cfg.round_channels(def.channels);
        let repeats = ((def.repeats as f64 * cfg.depth_multiplier).ceil() as usize).max(1);
        for r in 0..repeats {
            let scope = format!("blocks.{si}.{r}");
            let stride = if r == 0 { def.stride } else { 1 };
            let cin = b.channels(x);
            let se_reduced = (cin as f64 * def.se_ratio).round() as usize;
            let y = if def.inverted {
                let mid = make_divisible((cin * def.expand) as f64, 1);
                let y = b.conv(&format!("{scope}.conv_pw"), x, mid, 1, 1, 1, false);
                let y = bn_act(&mut b, &format!("{scope}.bn1"), y, cfg.bn_eps, Some(act));
                let y = b.conv(
                    &format!("{scope}.conv_dw"),
                    y,
                    mid,
                    def.kernel,
                    stride,
                    mid,
                    false,
                );
                let y = bn_act(&mut b, &format!("{scope}.bn2"), y, cfg.bn_eps, Some(act));
                let y = if def.se_ratio > 0.0 {
                    squeeze_excite(&mut b, &format!("{scope}.se"), y, se_reduced.max(1), act)
                } else {
                    y
                };
                let y = b.conv(&format!("{scope}.conv_pwl"), y, out, 1, 1, 1, false);
                bn_act(&mut b, &format!("{scope}.bn3"), y, cfg.bn_eps, None)
            } else {
                let y = b.conv(
                    &format!("{scope}.conv_dw"),
                    x,
                    cin,
                    def.kernel,
                    stride,
                    cin,
                    false,
                );
                let y = bn_act(&mut b, &format!("{scope}.bn1"), y, cfg.bn_eps, Some(act));
                let y = if def.se_ratio > 0.0 {
                    squeeze_excite(&mut b, &format!("{scope}.se"), y, se_reduced.max(1), act)
                } else {
                    y
                };
                let y = b.conv(&format!("{scope}.conv_pw"), y, out, 1, 1, 1, false);
                bn_act(&mut b, &format!("{scope}.bn2"), y, cfg.bn_eps, None)
            };
            x = if def.skip && stride == 1 && cin == out {
                b.residual(&scope, y, x)
            } else {
                y
            };
        }
    }
    let features = if cfg.scale_features {
        cfg.round_channels(cfg.features)
    } else {
        cfg.features
    };
    let x = b.conv("conv_head", x, features, 1, 1, 1, false);
    let x = bn_act(&mut b, "bn2", x, cfg.bn_eps, Some(act));
    let out = match opts.head {
        Head::Classifier => {
            let x = b.global_avg_pool(x);
            let x = b.dropout("classifier.dropout", x, cfg.dropout);
            b.linear("classifier", x, num_classes, true)
        }
        Head::Sed => super::sed_head(&mut b, x, num_classes, cfg.dropout),
    };
    Ok(b.finish(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_notation() {
        let d = BlockDef::parse("ir_r2_k5_s2_e6_c40_se0.25").expect("valid");
        assert!(d.inverted && d.skip);
        assert_eq!(
            (d.repeats, d.kernel, d.stride, d.expand, d.channels),
            (2, 5, 2, 6, 40)
        );
        assert_eq!(d.se_ratio, 0.25);
        assert!(
            !BlockDef::parse("ds_r1_k3_s1_c16_noskip")
                .expect("valid")
                .skip
        );
        assert!(BlockDef::parse("xx_r1").is_err());
        assert!(BlockDef::parse("ir_r1_k4_c8").is_err());
    }

    #[test]
    fn channel_rounding_matches_timm() {
        assert_eq!(make_divisible(32.0, 8), 32);
        assert_eq!(make_divisible(32.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(24.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(1280.0 * 0.25, 8), 320);
        assert_eq!(make_divisible(112.0 * 0.35, 8), 40);
    }
}

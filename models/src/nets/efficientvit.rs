//! EfficientViT (MIT Han Lab), the B-series classification networks, as timm builds them.
//!
//! Paper: Cai et al., "EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense
//! Prediction" (ICCV 2023). Reference implementation: timm's `efficientvit_mit.py`
//! (`EfficientVit`), whose `state_dict()` key names these parameters carry, so timm weights load
//! without renaming.
//!
//! Structure: a stem (3×3 stride-2 conv, then depthwise-separable residual blocks), four stages
//! that each start with a stride-2 MBConv; the first two stages continue with MBConvs, the last
//! two with EfficientViT blocks (LiteMLA multi-scale ReLU linear attention, then an MBConv), and a
//! head (1×1 conv, global average pool, Linear–LayerNorm–Hardswish, Linear). The last two stages
//! use "fewer norm" MBConvs (biased convs without BatchNorm, BatchNorm only after the projection).

use super::{ArchError, ArchOptions, Head};
use crate::ir::{Activation, ConvSpec, Graph, GraphBuilder, ValueId};

const ACT: Activation = Activation::Hardswish;

/// Widths and depths of an EfficientViT-B network.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientVitConfig {
    /// Channels of the stem and the four stages.
    pub widths: [usize; 5],
    /// Residual blocks in the stem and the four stages.
    pub depths: [usize; 5],
    /// Channels per attention head.
    pub head_dim: usize,
    /// MBConv expansion ratio.
    pub expand_ratio: usize,
    /// Widths of the head's 1×1 conv and of its hidden Linear layer.
    pub head_widths: [usize; 2],
    /// Dropout before the classifier (training only).
    pub dropout: f64,
}

impl EfficientVitConfig {
    /// `efficientvit_b0`: widths (8, 16, 32, 64, 128), depths (1, 2, 2, 2, 2), head dim 16,
    /// head widths (1024, 1280).
    pub fn b0() -> Self {
        Self {
            widths: [8, 16, 32, 64, 128],
            depths: [1, 2, 2, 2, 2],
            head_dim: 16,
            expand_ratio: 4,
            head_widths: [1024, 1280],
            dropout: 0.0,
        }
    }
}

fn spec(
    out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    bias: bool,
    norm: bool,
) -> ConvSpec {
    ConvSpec {
        out,
        kernel,
        stride,
        groups,
        bias,
        norm,
    }
}

/// timm's `MBConv`: 1×1 expand, k×k depthwise (stride), 1×1 project (no activation).
/// With `fewer_norm`, the first two convs have a bias and no BatchNorm.
fn mbconv(
    b: &mut GraphBuilder,
    scope: &str,
    x: ValueId,
    out: usize,
    stride: usize,
    expand: usize,
    fewer_norm: bool,
) -> ValueId {
    let mid = b.channels(x) * expand;
    let (bias, norm) = (fewer_norm, !fewer_norm);
    let y = b.conv_norm_act(
        &format!("{scope}.inverted_conv"),
        x,
        spec(mid, 1, 1, 1, bias, norm),
        Some(ACT),
    );
    let y = b.conv_norm_act(
        &format!("{scope}.depth_conv"),
        y,
        spec(mid, 3, stride, mid, bias, norm),
        Some(ACT),
    );
    b.conv_norm_act(
        &format!("{scope}.point_conv"),
        y,
        spec(out, 1, 1, 1, false, true),
        None,
    )
}

/// timm's `DSConv` (stem blocks): 3×3 depthwise + BN + act, 1×1 pointwise + BN.
fn dsconv(b: &mut GraphBuilder, scope: &str, x: ValueId, out: usize) -> ValueId {
    let c = b.channels(x);
    let y = b.conv_bn_act(&format!("{scope}.depth_conv"), x, c, 3, 1, c, Some(ACT));
    b.conv_bn_act(&format!("{scope}.point_conv"), y, out, 1, 1, 1, None)
}

/// timm's `LiteMLA` with one 5×5 aggregation scale.
fn lite_mla(b: &mut GraphBuilder, scope: &str, x: ValueId, dim: usize) -> ValueId {
    let c = b.channels(x);
    let heads = c / dim;
    let total = heads * dim;
    let qkv = b.conv_norm_act(
        &format!("{scope}.qkv"),
        x,
        spec(3 * total, 1, 1, 1, false, false),
        None,
    );
    let agg = b.conv(
        &format!("{scope}.aggreg.0.0"),
        qkv,
        3 * total,
        5,
        1,
        3 * total,
        false,
    );
    let agg = b.conv(
        &format!("{scope}.aggreg.0.1"),
        agg,
        3 * total,
        1,
        1,
        3 * heads,
        false,
    );
    let multi = b.concat_channels(&format!("{scope}.cat"), vec![qkv, agg]);
    let att = b.linear_attention(&format!("{scope}.attn"), multi, dim, 1e-5);
    b.conv_norm_act(
        &format!("{scope}.proj"),
        att,
        spec(c, 1, 1, 1, false, true),
        None,
    )
}

/// Build the backbone and head.
pub fn efficientvit(
    name: &str,
    cfg: &EfficientVitConfig,
    in_chans: usize,
    num_classes: usize,
    opts: &ArchOptions,
) -> Result<Graph, ArchError> {
    let mut b = GraphBuilder::new(name, in_chans).with_drop_path(opts.drop_path_rate);
    let x = b.input();
    let w = cfg.widths;
    let mut x = b.conv_bn_act("stem.in_conv", x, w[0], 3, 2, 1, Some(ACT));
    for r in 0..cfg.depths[0] {
        let y = dsconv(&mut b, &format!("stem.res{r}.main"), x, w[0]);
        x = b.residual(&format!("stem.res{r}"), y, x);
    }
    for stage in 0..4 {
        let (width, depth) = (w[stage + 1], cfg.depths[stage + 1]);
        let vit = stage >= 2;
        let s = format!("stages.{stage}.blocks");
        x = mbconv(
            &mut b,
            &format!("{s}.0.main"),
            x,
            width,
            2,
            cfg.expand_ratio,
            vit,
        );
        if vit {
            for blk in 1..=depth {
                let y = lite_mla(
                    &mut b,
                    &format!("{s}.{blk}.context_module.main"),
                    x,
                    cfg.head_dim,
                );
                x = b.residual(&format!("{s}.{blk}.context_module"), y, x);
                let y = mbconv(
                    &mut b,
                    &format!("{s}.{blk}.local_module.main"),
                    x,
                    width,
                    1,
                    cfg.expand_ratio,
                    true,
                );
                x = b.residual(&format!("{s}.{blk}.local_module"), y, x);
            }
        } else {
            for blk in 1..depth {
                let y = mbconv(
                    &mut b,
                    &format!("{s}.{blk}.main"),
                    x,
                    width,
                    1,
                    cfg.expand_ratio,
                    false,
                );
                x = b.residual(&format!("{s}.{blk}"), y, x);
            }
        }
    }
    let x = b.conv_bn_act("head.in_conv", x, cfg.head_widths[0], 1, 1, 1, Some(ACT));
    let out = match opts.head {
        Head::Classifier => {
            let x = b.global_avg_pool(x);
            let x = b.linear("head.classifier.0", x, cfg.head_widths[1], false);
            let x = b.layer_norm("head.classifier.1", x, 1e-5);
            let x = b.act("head.classifier.2", x, ACT);
            let x = b.dropout("head.classifier.3", x, cfg.dropout);
            b.linear("head.classifier.4", x, num_classes, true)
        }
        Head::Sed => super::sed_head(&mut b, x, num_classes, cfg.dropout),
    };
    Ok(b.finish(out)?)
}

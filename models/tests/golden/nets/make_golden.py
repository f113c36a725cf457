#!/usr/bin/env python3
"""Golden files for the Rust network definitions: small timm models with known weights and logits.

Run from the repository root with the project venv:
    .env/venv/bin/python models/tests/golden/nets/make_golden.py           # committed small cases
    .env/venv/bin/python models/tests/golden/nets/make_golden.py --full    # + full-size models
                                                                           #   into .dev/golden-nets-full/

For every case it writes, next to this script (full-size ones into .dev/golden-nets-full/):
  <case>.weights.safetensors  the model's state_dict() in float32, keys exactly as timm names them,
                              without `num_batches_tracked`. Norm layers are randomised (running
                              stats and affine) so that eval-mode normalisation is really exercised,
                              and each Conv2d/Linear weight is scaled by a power of two so that
                              activations stay at unit scale through the network.
  <case>.io.safetensors       `input` float32 [2, C, H, W] (seeded normal);
                              `output` logits of the model run in float64 (cast to float32);
                              `output_f32` logits of the float32 model (same weights), to show the
                              float32 rounding gap; for the RGB-import case also the adapted stem.
  <case>.json                 what the case is, the timm call, param count, ordered [key, shape]
                              list (the contract for the Rust definitions), conv strides/padding,
                              module types, representative block keys, versions and notes.
and README.md (regenerated from the same numbers).

Deterministic: everything is seeded, runs single-threaded on CPU, and weight rescaling uses powers
of two only (so small floating-point differences between machines do not change the weights).
"""
import argparse
import copy
import hashlib
import inspect
import json
import math
import os
import sys
import types
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

import timm
import timm.models.efficientnet as tm_effnet
import timm.models.efficientvit_mit as tm_evit
from timm.models._manipulate import adapt_input_conv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../../.."))
FULL_DIR = os.path.join(ROOT, ".dev", "golden-nets-full")
COMMITTED_MAX_BYTES = 1_000_000

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# efficientvit_b0's structure, as registered in timm (checked against the registered function below)
EVIT_B0 = dict(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16)
EVIT_SMALL_HEAD = (64, 80)


# ---------------------------------------------------------------------------------------------
# model construction


def make_efficientvit_small(in_chans, num_classes):
    """timm's EfficientVit class with efficientvit_b0's structure, small head widths."""
    return tm_evit.EfficientVit(
        in_chans=in_chans,
        widths=EVIT_B0["widths"],
        depths=EVIT_B0["depths"],
        head_dim=EVIT_B0["head_dim"],
        expand_ratio=4,
        norm_layer=nn.BatchNorm2d,  # eps 1e-5, timm's default for EfficientVit
        act_layer=nn.Hardswish,
        head_widths=EVIT_SMALL_HEAD,
        num_classes=num_classes,
    )


EVIT_SMALL_CTOR = (
    "timm.models.efficientvit_mit.EfficientVit(in_chans={in_chans}, widths=(8, 16, 32, 64, 128), "
    "depths=(1, 2, 2, 2, 2), head_dim=16, expand_ratio=4, norm_layer=nn.BatchNorm2d, "
    "act_layer=nn.Hardswish, head_widths=(64, 80), num_classes={num_classes})"
)
EVIT_SMALL_KWARGS = dict(
    widths=[8, 16, 32, 64, 128], depths=[1, 2, 2, 2, 2], head_dim=16, expand_ratio=4,
    norm_layer="torch.nn.BatchNorm2d(eps=1e-05)", act_layer="torch.nn.Hardswish",
    head_widths=[64, 80], global_pool="avg", drop_rate=0.0,
)


def case_specs(full):
    small = [
        dict(
            case="efficientvit_b0_small", seed=1001, in_chans=1, num_classes=7, hw=(64, 96),
            timm_model=EVIT_SMALL_CTOR.format(in_chans=1, num_classes=7),
            kwargs=dict(EVIT_SMALL_KWARGS, in_chans=1, num_classes=7),
            build=lambda: make_efficientvit_small(1, 7),
            family="efficientvit",
        ),
        dict(
            case="efficientnet_b0_small", seed=1002, in_chans=1, num_classes=7, hw=(64, 96),
            timm_model="timm.models.efficientnet._gen_efficientnet('efficientnet_b0', "
                       "channel_multiplier=0.25, depth_multiplier=0.5, pretrained=False, "
                       "in_chans=1, num_classes=7)",
            kwargs=dict(variant="efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.5,
                        pretrained=False, in_chans=1, num_classes=7),
            build=lambda: tm_effnet._gen_efficientnet(
                "efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.5,
                pretrained=False, in_chans=1, num_classes=7),
            family="efficientnet",
        ),
        dict(
            case="mnasnet_100_small", seed=1003, in_chans=1, num_classes=7, hw=(64, 96),
            timm_model="timm.models.efficientnet._gen_mnasnet_b1('mnasnet_100', "
                       "channel_multiplier=0.25, pretrained=False, in_chans=1, num_classes=7)",
            kwargs=dict(variant="mnasnet_100", channel_multiplier=0.25, pretrained=False,
                        in_chans=1, num_classes=7),
            build=lambda: tm_effnet._gen_mnasnet_b1(
                "mnasnet_100", channel_multiplier=0.25, pretrained=False, in_chans=1, num_classes=7),
            family="mnasnet",
        ),
    ]
    big = [
        dict(
            case="efficientvit_b0_full", seed=2001, in_chans=1, num_classes=182, hw=(224, 224),
            timm_model="timm.create_model('efficientvit_b0', pretrained=False, in_chans=1, num_classes=182)",
            kwargs=dict(model_name="efficientvit_b0", pretrained=False, in_chans=1, num_classes=182),
            build=lambda: timm.create_model("efficientvit_b0", pretrained=False, in_chans=1, num_classes=182),
            family="efficientvit",
        ),
        dict(
            case="efficientnet_b0_full", seed=2002, in_chans=1, num_classes=182, hw=(224, 224),
            timm_model="timm.create_model('efficientnet_b0', pretrained=False, in_chans=1, num_classes=182)",
            kwargs=dict(model_name="efficientnet_b0", pretrained=False, in_chans=1, num_classes=182),
            build=lambda: timm.create_model("efficientnet_b0", pretrained=False, in_chans=1, num_classes=182),
            family="efficientnet",
        ),
        dict(
            case="mnasnet_100_full", seed=2003, in_chans=1, num_classes=182, hw=(224, 224),
            timm_model="timm.create_model('mnasnet_100', pretrained=False, in_chans=1, num_classes=182)",
            kwargs=dict(model_name="mnasnet_100", pretrained=False, in_chans=1, num_classes=182),
            build=lambda: timm.create_model("mnasnet_100", pretrained=False, in_chans=1, num_classes=182),
            family="mnasnet",
        ),
    ]
    return small, (big if full else [])


# ---------------------------------------------------------------------------------------------
# weights: randomised norms and power-of-two rescaling


def randomise_norms(model, gen):
    """BatchNorm: running_mean ~ 0.1*N(0,1), running_var ~ U(0.5,1.5), weight ~ U(0.5,1.5),
    bias ~ 0.1*N(0,1). LayerNorm: weight ~ U(0.5,1.5), bias ~ 0.1*N(0,1)."""
    n_bn = n_ln = 0
    with torch.no_grad():
        for _, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(generator=gen).mul_(0.1)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(generator=gen).mul_(0.1)
                n_bn += 1
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(generator=gen).mul_(0.1)
                n_ln += 1
    return n_bn, n_ln


class _Stop(Exception):
    pass


def forward_order(model, x):
    """Conv2d / Linear modules in the order the forward pass calls them."""
    order, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, name=name: order.append(name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(order) == len(set(order)), "a weight layer is called twice"
    return order


def module_output_std(model, m, x):
    got = {}

    def hook(mod, i, o):
        got["std"] = o.detach().double().std().item()
        raise _Stop

    h = m.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return got["std"]


def calibrate(model, x, target=1.0):
    """LSUV-like: walk weight layers in forward order and scale each weight by a power of two
    so that the layer's output std on the calibration batch is within a factor sqrt(2) of
    `target`. Powers of two only change exponents, so the result is robust to tiny numeric
    differences. Returns (min, max) of the final per-layer stds."""
    mods = dict(model.named_modules())
    stds = []
    for name in forward_order(model, x):
        m = mods[name]
        for _ in range(4):
            s = module_output_std(model, m, x)
            k = round(math.log2(target / s)) if s > 0 else 0
            if k == 0:
                break
            with torch.no_grad():
                m.weight.mul_(2.0 ** k)
        stds.append(module_output_std(model, m, x))
    return min(stds), max(stds)


# ---------------------------------------------------------------------------------------------
# double-precision reference


def _lite_mla_attn_native_dtype(self, q, k, v):
    # Same linear-attention math as timm's LiteMLA._attn, which upcasts to float32 (a no-op for a
    # float32 model, but a *downcast* for a float64 one); this keeps the working dtype.
    kv = k.transpose(-1, -2) @ v
    out = q @ kv
    return out[..., :-1] / (out[..., -1:] + self.eps)


def patch_lite_mla(model):
    n = 0
    for m in model.modules():
        if isinstance(m, tm_evit.LiteMLA):
            m._attn = types.MethodType(_lite_mla_attn_native_dtype, m)
            n += 1
    return n


def run_f32_and_f64(model, x):
    model.eval()
    with torch.no_grad():
        out32 = model(x)
    m64 = copy.deepcopy(model).double().eval()
    n_patched = patch_lite_mla(m64)
    if n_patched:
        # the patch must be the identity for float32: check on a float32 copy, bit for bit
        m32p = copy.deepcopy(model).eval()
        patch_lite_mla(m32p)
        with torch.no_grad():
            assert torch.equal(m32p(x), out32), "LiteMLA float64 patch changes float32 results"
    with torch.no_grad():
        out64 = m64(x.double())
    assert out64.dtype == torch.float64
    return out32, out64, n_patched


# ---------------------------------------------------------------------------------------------
# description helpers


def export_state_dict(model):
    sd = OrderedDict()
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        sd[k] = v.detach().to(torch.float32).contiguous().clone()
    return sd


def module_types(model):
    seen = []
    for m in model.modules():
        t = type(m)
        n = f"{t.__module__}.{t.__qualname__}"
        if n not in seen:
            seen.append(n)
    return seen


def conv_layout(model):
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            pad = m.padding if isinstance(m.padding, str) else list(m.padding)
            rows.append(dict(
                name=name, type=type(m).__name__, in_ch=m.in_channels, out_ch=m.out_channels,
                kernel=list(m.kernel_size), stride=list(m.stride), padding=pad,
                dilation=list(m.dilation), groups=m.groups, bias=m.bias is not None))
    return rows


def norm_eps(model):
    eps = set()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            eps.add((type(m).__name__, m.eps))
    return sorted([list(e) for e in eps])


def keys_under(sd, prefix):
    return [[k, list(v.shape)] for k, v in sd.items() if k.startswith(prefix)]


def representative_prefixes(model, family):
    if family == "efficientvit":
        return ["stem.", "stages.0.blocks.0.", "stages.0.blocks.1.", "stages.2.blocks.0.",
                "stages.2.blocks.1.", "head."]
    # EfficientNet family: stem, first DS block, first IR block, first IR block with skip, head
    out = ["conv_stem.", "bn1.", "blocks.0.0."]
    first_ir = first_ir_skip = None
    for name, m in model.named_modules():
        if isinstance(m, timm.models._efficientnet_blocks.InvertedResidual):
            if first_ir is None:
                first_ir = name
            if first_ir_skip is None and m.has_skip:
                first_ir_skip = name
    for n in (first_ir, first_ir_skip):
        if n is not None and n + "." not in out:
            out.append(n + ".")
    return out + ["conv_head.", "bn2.", "classifier."]


def effnet_block_table(model):
    """One row per block of an EfficientNet-family model: the facts not visible in key shapes."""
    rows = []
    B = timm.models._efficientnet_blocks
    for si, stage in enumerate(model.blocks):
        for bi, blk in enumerate(stage):
            row = dict(name=f"blocks.{si}.{bi}", type=type(blk).__name__,
                       has_skip=bool(getattr(blk, "has_skip", False)))
            if isinstance(blk, B.InvertedResidual):
                row.update(in_ch=blk.conv_pw.in_channels, mid_ch=blk.conv_pw.out_channels,
                           out_ch=blk.conv_pwl.out_channels, kernel=blk.conv_dw.kernel_size[0],
                           stride=blk.conv_dw.stride[0])
            elif isinstance(blk, B.DepthwiseSeparableConv):
                row.update(in_ch=blk.conv_dw.in_channels, out_ch=blk.conv_pw.out_channels,
                           kernel=blk.conv_dw.kernel_size[0], stride=blk.conv_dw.stride[0])
            se = getattr(blk, "se", None)
            if isinstance(se, B.SqueezeExcite):
                row.update(se_rd_ch=se.conv_reduce.out_channels,
                           se_act=type(se.act1).__name__, se_gate=type(se.gate).__name__)
            else:
                row.update(se_rd_ch=0)
            rows.append(row)
    return rows


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _json_fmt(obj, ind=0):
    """Indented json that keeps short lists/objects (e.g. one [key, shape] pair) on one line."""
    flat = json.dumps(obj)
    if len(flat) + ind <= 100 or not isinstance(obj, (list, dict)) or not obj:
        return flat
    pad = " " * (ind + 1)
    if isinstance(obj, list):
        return "[\n" + ",\n".join(pad + _json_fmt(v, ind + 1) for v in obj) + "\n" + " " * ind + "]"
    return "{\n" + ",\n".join(pad + json.dumps(k) + ": " + _json_fmt(v, ind + 1) for k, v in obj.items()) \
        + "\n" + " " * ind + "}"


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(_json_fmt(json.loads(json.dumps(obj))))
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# checks that tie the cases to timm's registered models


def check_efficientvit_registration(sd_small, model_small, x):
    src = inspect.getsource(tm_evit.efficientvit_b0)
    print("  timm's registered efficientvit_b0:")
    for line in src.strip().splitlines():
        print("    | " + line)
    # capture the kwargs the registered function passes to the EfficientVit class
    captured = {}
    orig = tm_evit._create_efficientvit

    def spy(variant, pretrained=False, **kw):
        captured.update(kw)
        return orig(variant, pretrained=pretrained, **kw)

    tm_evit._create_efficientvit = spy
    try:
        reg = timm.create_model("efficientvit_b0", pretrained=False, in_chans=1, num_classes=7,
                                head_widths=EVIT_SMALL_HEAD)
    finally:
        tm_evit._create_efficientvit = orig
    for k, v in EVIT_B0.items():
        assert tuple(captured[k]) == tuple(v) if isinstance(v, tuple) else captured[k] == v, (k, captured[k])
    sig = inspect.signature(tm_evit.EfficientVit.__init__).parameters
    defaults = {k: sig[k].default for k in ("expand_ratio", "norm_layer", "act_layer")}
    assert defaults["expand_ratio"] == 4 and defaults["norm_layer"] is nn.BatchNorm2d \
        and defaults["act_layer"] is nn.Hardswish, defaults
    print(f"  registered kwargs: widths={captured['widths']} depths={captured['depths']} "
          f"head_dim={captured['head_dim']} head_widths(default)=(1024, 1280); "
          f"EfficientVit defaults: {defaults}")
    reg_sd = export_state_dict(reg)
    assert [(k, tuple(v.shape)) for k, v in reg_sd.items()] == \
           [(k, tuple(v.shape)) for k, v in sd_small.items()], "key/shape mismatch vs registered model"
    reg.load_state_dict(model_small.state_dict(), strict=True)
    reg.eval()
    model_small.eval()
    with torch.no_grad():
        same = torch.equal(reg(x), model_small(x))
    assert same
    print("  timm.create_model('efficientvit_b0', head_widths=(64, 80), in_chans=1, num_classes=7) has the "
          "same keys/shapes and gives bit-identical logits with these weights")
    return dict(
        registered_efficientvit_b0_kwargs=dict(
            widths=list(captured["widths"]), depths=list(captured["depths"]),
            head_dim=captured["head_dim"], head_widths=list(captured["head_widths"])),
        efficientvit_class_defaults=dict(expand_ratio=4, norm_layer="nn.BatchNorm2d (eps 1e-5)",
                                         act_layer="nn.Hardswish"),
        equivalent_create_model="timm.create_model('efficientvit_b0', pretrained=False, "
                                "head_widths=(64, 80), in_chans=1, num_classes=7): same keys/shapes, "
                                "bit-identical float32 logits with these weights",
    )


# ---------------------------------------------------------------------------------------------
# case runner


def describe_family(model, family):
    if family == "efficientvit":
        return dict(
            summary=(
                "EfficientViT-B (MIT). ResidualBlock(main, shortcut): main(x) + x when shortcut is Identity, "
                "main(x) alone when it is None. stem: in_conv = ConvNormAct 3x3 s2 p1 (conv no bias, BN, "
                "Hardswish), then depths[0] x res{i} = ResidualBlock(DSConv, Identity); DSConv = depth_conv "
                "(dw3x3 p1, BN, Hardswish) -> point_conv (1x1, BN, no act). stages.0 and stages.1 (widths[1], "
                "widths[2]): blocks.0 = ResidualBlock(MBConv stride 2, None), blocks.1.. = ResidualBlock("
                "MBConv stride 1, Identity); MBConv = inverted_conv (1x1, BN, Hardswish) -> depth_conv (dw3x3 "
                "p1, BN, Hardswish) -> point_conv (1x1, BN, no act), mid = round(in * 4), convs without bias. "
                "stages.2 and stages.3 ('vit' stages): blocks.0 = ResidualBlock(MBConv stride 2 with "
                "fewer_norm, None) where inverted_conv and depth_conv have a bias and no BN and point_conv has "
                "no bias + BN; then depths[i] x EfficientVitBlock = context_module (x + LiteMLA(x)) then "
                "local_module (x + MBConv-fewer_norm(x), stride 1). LiteMLA(dim=head_dim=16, heads = C // 16): "
                "qkv = 1x1 conv (no bias, no norm, no act) to 3*C channels; aggreg.0 = depthwise 5x5 p2 (no "
                "bias) then 1x1 with groups = 3*heads (no bias); cat([qkv, aggreg(qkv)], channels) -> reshape "
                "(B, 2*heads, 3*dim, H*W) (so channels come as per-head blocks [q(dim), k(dim), v(dim)]) -> "
                "transpose to (B, 2*heads, HW, 3*dim) -> q, k, v = split of the last axis; q = relu(q), "
                "k = relu(k), v = pad v with a trailing column of ones (dim+1); out = q @ (k^T @ v) (timm "
                "computes this in float32); out = out[..., :dim] / (out[..., dim:] + 1e-5); transpose back and "
                "reshape to (B, 2*heads*dim, H, W); proj = 1x1 (no bias) + BN, no act. head: in_conv = 1x1 "
                "(no bias) + BN + Hardswish -> global average pool over H, W -> classifier.0 Linear (no bias) "
                "-> classifier.1 LayerNorm (eps 1e-5) -> classifier.2 Hardswish -> classifier.3 Dropout -> "
                "classifier.4 Linear (bias). nn.Hardswish(x) = x * relu6(x + 3) / 6; BN eps 1e-5."),
        )
    blocks = effnet_block_table(model)
    acts = sorted({type(m).__name__ for m in model.modules()
                   if isinstance(m, (nn.ReLU, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.ReLU6))})
    if family == "efficientnet":
        summary = (
            "EfficientNet-B0 structure (timm 'efficientnet_b0', not the tf_ variant): activation SiLU "
            "(swish) everywhere incl. SE act; SE ratio 0.25 of the BLOCK INPUT channels (se_rd_ch below), "
            "SE = x * sigmoid(conv_expand(silu(conv_reduce(mean_hw(x))))) with 1x1 convs with bias, applied "
            "after the depthwise conv+BN+act; padding style: symmetric PyTorch padding k//2 (plain "
            "nn.Conv2d, no Conv2dSame / TF 'SAME'); BN eps 1e-5. BatchNormAct2d = BN then act (its keys are "
            "plain BN keys). DS block: conv_dw+bn1(act) -> se -> conv_pw+bn2(no act) (+x if has_skip). IR "
            "block: conv_pw+bn1(act) -> conv_dw+bn2(act) -> se -> conv_pwl+bn3(no act) (+x if has_skip; "
            "drop_path is identity in eval). Head: conv_head 1x1 + bn2(act) -> avg pool -> classifier "
            "Linear.")
    else:
        summary = (
            "MnasNet-B1 structure (timm 'mnasnet_100'): activation ReLU, NO squeeze-excite, padding "
            "symmetric PyTorch k//2 (plain nn.Conv2d), BN eps 1e-5. Stage 0 is a DS block with noskip; "
            "the last IR block has noskip. Block layouts as in EfficientNet (DS: conv_dw+bn1(act) -> "
            "conv_pw+bn2; IR: conv_pw+bn1(act) -> conv_dw+bn2(act) -> conv_pwl+bn3; + x if has_skip). "
            "num_features (conv_head) stays 1280: the mnasnet generator does not scale it. Head: "
            "conv_head 1x1 + bn2(ReLU) -> avg pool -> classifier Linear.")
    return dict(summary=summary, activations=acts, blocks=blocks)


def run_case(spec, out_dir, committed):
    name = spec["case"]
    print(f"\n=== {name} ===")
    torch.manual_seed(spec["seed"])
    model = spec["build"]().eval()
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    n_bn, n_ln = randomise_norms(model, gen)
    C, (H, W) = spec["in_chans"], spec["hw"]
    x_cal = torch.randn((4, C, H, W), generator=torch.Generator().manual_seed(spec["seed"] + 2))
    x = torch.randn((2, C, H, W), generator=torch.Generator().manual_seed(spec["seed"] + 3))
    smin, smax = calibrate(model, x_cal)
    print(f"  randomised {n_bn} BatchNorm, {n_ln} LayerNorm; per-layer output std after "
          f"power-of-two rescaling: {smin:.3f}..{smax:.3f}")
    sd = export_state_dict(model)
    extra_notes = {}
    if name == "efficientvit_b0_small":
        extra_notes = check_efficientvit_registration(sd, model, x)
    return finish_case(spec, model, sd, x, out_dir, committed, extra_notes, extra_io={})


def finish_case(spec, model, sd, x, out_dir, committed, extra_notes, extra_io, run_model=None,
                json_extra=None):
    name = spec["case"]
    run_model = run_model or model
    out32, out64, n_patched = run_f32_and_f64(run_model, x)
    std = out64.std().item()
    gap = (out64 - out32.double()).abs().max().item()
    rel = gap / out64.abs().max().item()
    print(f"  output std (f64) = {std:.4f}  |output - output_f32|max = {gap:.3e} (rel {rel:.2e})")
    assert 0.1 < std < 10, f"output std {std} out of range"

    param_count = sum(p.numel() for p in model.parameters())
    print(f"  params: {param_count:,}")
    mtypes = module_types(run_model)
    print("  module types: " + ", ".join(t.rsplit(".", 1)[-1] for t in mtypes))
    reps = OrderedDict((p, keys_under(sd, p)) for p in representative_prefixes(model, spec["family"]))
    for p, ks in reps.items():
        print(f"  keys under {p!r}:")
        for k, s in ks:
            print(f"    {k} {s}")

    wpath = os.path.join(out_dir, f"{name}.weights.safetensors")
    iopath = os.path.join(out_dir, f"{name}.io.safetensors")
    # one metadata entry only: safetensors writes its metadata map in hash order
    save_file(sd, wpath, metadata={"case": name})
    io = OrderedDict(input=x.contiguous(), output=out64.to(torch.float32).contiguous(),
                     output_f32=out32.contiguous())
    io.update(extra_io)
    save_file(io, iopath, metadata={"case": name})
    wbytes, iobytes = os.path.getsize(wpath), os.path.getsize(iopath)
    for p in (wpath, iopath):
        os.chmod(p, 0o644)
    if committed and wbytes >= COMMITTED_MAX_BYTES:
        print(f"  WARNING: {os.path.basename(wpath)} is {wbytes:,} bytes (>= {COMMITTED_MAX_BYTES:,})")
    print(f"  wrote {os.path.relpath(wpath, ROOT)} ({wbytes:,} B), {os.path.relpath(iopath, ROOT)} "
          f"({iobytes:,} B)")

    notes = OrderedDict()
    notes["summary"] = None
    fam = describe_family(model, spec["family"])
    notes["summary"] = fam.pop("summary")
    notes.update(fam)
    notes["weights"] = (
        "timm init (seed %d), then every BatchNorm: running_mean~0.1*N(0,1), running_var~U(0.5,1.5), "
        "weight~U(0.5,1.5), bias~0.1*N(0,1); every LayerNorm: weight~U(0.5,1.5), bias~0.1*N(0,1); then "
        "each Conv2d/Linear weight (not bias) scaled by a power of two, in forward order, so its output "
        "std on a calibration batch is within sqrt(2) of 1 (LSUV-like). Not trained." % spec["seed"])
    notes["reference"] = (
        "output = logits of a float64 copy of the model (model.double(), eval mode) cast to float32; "
        "output_f32 = logits of the float32 model. Eval mode: BN uses running stats, dropout/drop-path "
        "are identity.")
    if n_patched:
        notes["reference"] += (
            " timm's LiteMLA._attn casts q,k,v to float32 (and back), which in a float64 model would "
            "downcast; for the float64 copy only, %d LiteMLA._attn methods were replaced by the same math "
            "without the cast (checked to be bit-identical to timm's for float32)." % n_patched)
    notes["norm_eps"] = norm_eps(run_model)
    notes["module_types"] = mtypes
    notes["representative_blocks"] = reps
    notes.update(extra_notes)

    meta = OrderedDict(
        case=name,
        timm_model=spec["timm_model"],
        kwargs=spec["kwargs"],
        in_chans=spec["in_chans"] if "io_in_chans" not in spec else spec["io_in_chans"],
        num_classes=spec["num_classes"],
        input_shape=list(x.shape),
        output_shape=list(out64.shape),
        param_count=param_count,
        output_std=round(std, 6),
        max_abs_output_minus_output_f32=float(f"{gap:.3e}"),
        files=OrderedDict(
            weights=dict(name=os.path.basename(wpath), bytes=wbytes, sha256=sha256(wpath)),
            io=dict(name=os.path.basename(iopath), bytes=iobytes, sha256=sha256(iopath),
                    tensors={k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in io.items()}),
        ),
        keys=[[k, list(v.shape)] for k, v in sd.items()],
        conv_layout=conv_layout(run_model),
        torch=torch.__version__,
        timm=timm.__version__,
        notes=notes,
    )
    if json_extra:
        meta.update(json_extra)
    write_json(os.path.join(out_dir, f"{name}.json"), meta)
    return dict(case=name, param_count=param_count, std=std, gap=gap, wbytes=wbytes, iobytes=iobytes,
                input_shape=list(x.shape), timm_model=spec["timm_model"], n_keys=len(sd))


def run_rgb_import_case(out_dir):
    """Case 4: an RGB state dict of case 1's architecture, loaded into a 1-channel model by timm."""
    spec = dict(case="efficientvit_b0_small_rgb_import", seed=1004, in_chans=3, num_classes=7,
                hw=(64, 96), family="efficientvit")
    name = spec["case"]
    print(f"\n=== {name} ===")
    torch.manual_seed(spec["seed"])
    rgb = make_efficientvit_small(3, 7).eval()
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    n_bn, n_ln = randomise_norms(rgb, gen)
    x_cal = torch.randn((4, 3, 64, 96), generator=torch.Generator().manual_seed(spec["seed"] + 2))
    smin, smax = calibrate(rgb, x_cal)
    print(f"  RGB model: randomised {n_bn} BatchNorm, {n_ln} LayerNorm; per-layer std {smin:.3f}..{smax:.3f}")
    rgb_sd = export_state_dict(rgb)

    # timm's own pretrained-loading path, fed an in-memory state dict instead of a download
    overlay = dict(state_dict=OrderedDict((k, v.clone()) for k, v in rgb_sd.items()), num_classes=7,
                   input_size=(3, 224, 224))
    torch.manual_seed(spec["seed"] + 10)
    mono = timm.create_model("efficientvit_b0", pretrained=True, pretrained_cfg_overlay=overlay,
                             in_chans=1, num_classes=7, head_widths=EVIT_SMALL_HEAD).eval()
    mono_sd = export_state_dict(mono)
    stem = "stem.in_conv.conv.weight"
    expect = adapt_input_conv(1, rgb_sd[stem].clone())
    assert torch.equal(mono_sd[stem], expect)
    assert torch.allclose(mono_sd[stem], rgb_sd[stem].sum(dim=1, keepdim=True), rtol=0, atol=1e-6)
    assert list(mono_sd) == list(rgb_sd)
    for k in rgb_sd:
        if k != stem:
            assert torch.equal(mono_sd[k], rgb_sd[k]), k
    print(f"  timm.create_model(..., pretrained=True, in_chans=1) loaded the RGB state dict through "
          f"timm.models._builder.load_pretrained -> adapt_input_conv: {stem} "
          f"{list(rgb_sd[stem].shape)} -> {list(mono_sd[stem].shape)} = sum over the RGB axis; all other "
          f"tensors unchanged")

    # what happens when num_classes differs (no file): classifier dropped, fresh init kept
    overlay2 = dict(state_dict=OrderedDict((k, v.clone()) for k, v in rgb_sd.items()), num_classes=7,
                    input_size=(3, 224, 224))
    torch.manual_seed(0)
    other = timm.create_model("efficientvit_b0", pretrained=True, pretrained_cfg_overlay=overlay2,
                              in_chans=1, num_classes=11, head_widths=EVIT_SMALL_HEAD)
    torch.manual_seed(0)
    fresh = timm.create_model("efficientvit_b0", pretrained=False, in_chans=1, num_classes=11,
                              head_widths=EVIT_SMALL_HEAD)
    osd, fsd = other.state_dict(), fresh.state_dict()
    for k in ("head.classifier.4.weight", "head.classifier.4.bias"):
        assert torch.equal(osd[k], fsd[k]) and not torch.equal(osd[k][:7], rgb_sd[k]), k
    assert torch.equal(osd["head.classifier.0.weight"], rgb_sd["head.classifier.0.weight"])
    print("  num_classes 11 != 7: load_pretrained drops head.classifier.4.{weight,bias} and loads with "
          "strict=False; the classifier keeps its fresh random init (checked)")

    x = torch.randn((2, 1, 64, 96), generator=torch.Generator().manual_seed(spec["seed"] + 3))
    notes = dict(
        rgb_import=(
            "weights file = the in_chans=3 state dict (stem.in_conv.conv.weight is [8, 3, 3, 3]). The "
            "1-channel model was made by timm itself: timm.create_model('efficientvit_b0', pretrained=True, "
            "pretrained_cfg_overlay=dict(state_dict=<rgb state dict>, num_classes=7, input_size=(3, 224, "
            "224)), in_chans=1, num_classes=7, head_widths=(64, 80)). build_model_with_cfg -> "
            "timm.models._builder.load_pretrained sees first_conv='stem.in_conv.conv' and pretrained "
            "input_size[0]=3 != in_chans=1 and calls timm.models._manipulate.adapt_input_conv(1, w, "
            "base_chans=3), which for in_chans == 1 returns w.float().sum(dim=1, keepdim=True) (sum of the "
            "R, G, B filters, cast back to the weight dtype); every other tensor is loaded unchanged "
            "(strict). (For 1 < in_chans != 3 timm instead repeats the RGB filters cyclically and scales "
            "by 3/in_chans.) output/output_f32 are the logits of that 1-channel model on the 1-channel "
            "input; io also holds the adapted stem weight 'stem_in_conv_weight_1ch' [8, 1, 3, 3] "
            "(float32 sum as timm computes it)."),
        num_classes_mismatch=(
            "If num_classes differs from pretrained_cfg['num_classes'], load_pretrained deletes the "
            "classifier tensors named by pretrained_cfg['classifier'] ('head.classifier.4.weight' and "
            "'.bias' for EfficientVit; 'classifier.weight'/'.bias' for EfficientNet/MnasNet) from the state "
            "dict and loads with strict=False, so the new classifier keeps the model's fresh init (nn.Linear "
            "default init for EfficientVit, timm's _init_weight_goog for EfficientNet). Everything else, "
            "incl. head.classifier.0 and the LayerNorm, is loaded. Checked here with num_classes=11."),
        rgb_model_calibration="RGB model calibrated (power-of-two weight scaling) on a 3-channel batch; "
                              "the 1-channel model is NOT re-calibrated.",
    )
    full_spec = dict(spec, timm_model=EVIT_SMALL_CTOR.format(in_chans=3, num_classes=7)
                     + " [weights]; timm.create_model('efficientvit_b0', pretrained=True, "
                       "pretrained_cfg_overlay=dict(state_dict=<weights>, num_classes=7, "
                       "input_size=(3, 224, 224)), in_chans=1, num_classes=7, head_widths=(64, 80)) [io]",
                     kwargs=dict(EVIT_SMALL_KWARGS, in_chans=3, num_classes=7),
                     io_in_chans=1)
    return finish_case(full_spec, rgb, rgb_sd, x, out_dir, True, notes,
                       extra_io={"stem_in_conv_weight_1ch": mono_sd[stem].contiguous()},
                       run_model=mono,
                       json_extra=dict(weights_in_chans=3, adapt_fn="timm.models._manipulate.adapt_input_conv",
                                       load_fn="timm.models._builder.load_pretrained"))


# ---------------------------------------------------------------------------------------------


def write_readme(results):
    rows = "\n".join(
        f"| `{r['case']}` | {r['input_shape']} | {r['param_count']:,} | {r['n_keys']} | "
        f"{r['wbytes']:,} | {r['iobytes']:,} | {r['std']:.3f} | {r['gap']:.1e} |" for r in results)
    text = f"""# Golden files: network definitions vs timm

Generated by `make_golden.py` in this folder; do not edit by hand. Regenerate from the repository root:

```
.env/venv/bin/python models/tests/golden/nets/make_golden.py          # these files
.env/venv/bin/python models/tests/golden/nets/make_golden.py --full   # + full-size models into .dev/golden-nets-full/
```

Versions: torch {torch.__version__}, timm {timm.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}.
Runs on CPU, single-threaded, seeded; two runs give byte-identical files.

Per case:

* `<case>.weights.safetensors`: `model.state_dict()` in float32, keys exactly as timm names them,
  `num_batches_tracked` dropped. Untrained: timm's init, then every BatchNorm's running_mean
  (0.1*N(0,1)), running_var (U(0.5,1.5)), weight (U(0.5,1.5)), bias (0.1*N(0,1)) and every LayerNorm's
  weight/bias randomised, so that eval-mode normalisation matters; then each Conv2d/Linear weight is
  scaled by a power of two so activations stay near unit std through the network.
* `<case>.io.safetensors`: `input` float32 [2, C, H, W] (seeded normal); `output`: logits of the model
  in float64 (a `model.double()` copy, eval mode), stored as float32; `output_f32`: logits of the
  float32 model, to show the float32 rounding gap (last column below). A float32 implementation
  should match `output` to roughly that gap.
* `<case>.json`: the timm call, kwargs, param count, the ordered `keys` list of `[name, shape]` (the
  contract for the Rust definitions), `conv_layout` (stride/padding/groups/bias of every Conv2d),
  sha256 of both files, versions, and `notes` (architecture summary, module types, keys of
  representative blocks, block table for the EfficientNet family).

| case | input | params | keys | weights bytes | io bytes | output std | max\\|output - output_f32\\| |
|---|---|---|---|---|---|---|---|
{rows}

Cases:

1. `efficientvit_b0_small`: `timm.models.efficientvit_mit.EfficientVit` with exactly efficientvit_b0's
   structure (widths (8, 16, 32, 64, 128), depths (1, 2, 2, 2, 2), head_dim 16, expand_ratio 4,
   Hardswish, BatchNorm eps 1e-5) but head_widths (64, 80) instead of (1024, 1280); in_chans 1,
   7 classes. The script checks that timm's registered `efficientvit_b0` passes these widths/depths/
   head_dim and that `timm.create_model('efficientvit_b0', head_widths=(64, 80), in_chans=1,
   num_classes=7)` gives the same keys and bit-identical logits.
2. `efficientnet_b0_small`: `timm.models.efficientnet._gen_efficientnet('efficientnet_b0',
   channel_multiplier=0.25, depth_multiplier=0.5, in_chans=1, num_classes=7)`: efficientnet_b0's
   generator (SiLU, SE 0.25 of block input channels, symmetric k//2 padding) with fewer channels/blocks.
3. `mnasnet_100_small`: `timm.models.efficientnet._gen_mnasnet_b1('mnasnet_100',
   channel_multiplier=0.25, in_chans=1, num_classes=7)`: mnasnet_100's generator (ReLU, no SE) with
   a quarter of the channels (conv_head stays 1280 wide, as in timm).
4. `efficientvit_b0_small_rgb_import`: the weights file is an in_chans=3 state dict of case 1's
   architecture (other seed); `output` is from the 1-channel model that timm itself builds from it
   (`create_model(..., pretrained=True, pretrained_cfg_overlay=dict(state_dict=...), in_chans=1)` ->
   `load_pretrained` -> `timm.models._manipulate.adapt_input_conv`, which for in_chans=1 sums the
   R, G, B filters of `stem.in_conv.conv.weight`). The io file also holds that summed stem weight.
   When num_classes differs from the checkpoint, timm drops the classifier tensors and keeps a fresh
   init (see the json notes).

With `--full`, `efficientvit_b0_full`, `efficientnet_b0_full` and `mnasnet_100_full`
(`timm.create_model(name, in_chans=1, num_classes=182)`, input [2, 1, 224, 224]) are written the same
way into `.dev/golden-nets-full/` (git-ignored; too big to commit), with a `summary.json`.

Tolerances: `output_f32` is bit-reproducible only with the same torch build, CPU kind and a single
thread (what the script uses); with 2 threads the same weights give logits that differ from it by
about 1e-6. Compare a float32 implementation with `output` at an absolute tolerance of a few times
the last column (e.g. 1e-4 for these cases).

Sizes: case 1 keeps efficientvit_b0's exact body (widths up to 128, expand ratio 4), which alone has
about 0.68 M parameters, so its weights file (and case 4's) is about 2.8 MB; only the head is reduced.
`mnasnet_100_small` keeps timm's unscaled 1280-wide conv_head, hence about 1.4 MB.

The float64 reference for EfficientViT: timm's `LiteMLA._attn` casts q, k, v to float32, which would
downcast in a float64 model; only in the float64 copy it is replaced by the same math without the
cast (the script checks the replacement is bit-identical to timm for float32).
"""
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also write full-size models into .dev/golden-nets-full/")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}")
    small, big = case_specs(args.full)
    results = [run_case(s, HERE, committed=True) for s in small]
    results.append(run_rgb_import_case(HERE))
    write_readme(results)
    if big:
        os.makedirs(FULL_DIR, exist_ok=True)
        full_results = [run_case(s, FULL_DIR, committed=False) for s in big]
        write_json(os.path.join(FULL_DIR, "summary.json"),
                   dict(torch=torch.__version__, timm=timm.__version__, cases=full_results))
        results += full_results
    print("\nsummary:")
    for r in results:
        print(f"  {r['case']:36s} params {r['param_count']:>10,}  weights {r['wbytes']:>10,} B  "
              f"io {r['iobytes']:>7,} B  std {r['std']:.3f}  max|out-out_f32| {r['gap']:.2e}")


if __name__ == "__main__":
    main()

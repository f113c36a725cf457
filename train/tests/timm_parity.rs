//! The tch interpreter of our IR networks against timm, on the golden files of
//! `models/tests/golden/nets/` (made by `make_golden.py` there with timm 1.0.31 / torch 2.11.0).
//!
//! For each case: build our graph from the case's config, check that its parameter names and
//! shapes are timm's `state_dict` keys and that every convolution has timm's stride, padding,
//! groups and bias, load the timm weights by name, run eval mode in f32 and compare with timm's
//! float64 logits (`output`). The full-size cases in `.dev/golden-nets-full/` (git-ignored) run
//! when that folder exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use birdclef_models::checkpoint::{read_tensors, NamedTensor};
use birdclef_models::ir::{Graph, Op};
use birdclef_models::nets::efficientnet::{efficientnet, EfficientNetConfig};
use birdclef_models::nets::efficientvit::{efficientvit, EfficientVitConfig};
use birdclef_models::nets::{self, ArchOptions, Head};
use birdclef_train::model::net::{self, Net};
use serde_json::Value;
use tch::Device;

/// timm's float64 logits vs our float32 forward: the bound of the task.
const TOL: f32 = 1e-4;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/golden/nets")
}

fn full_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dev/golden-nets-full")
}

fn case_json(dir: &Path, case: &str) -> Value {
    let path = dir.join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("case json")
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

fn arr<const N: usize>(v: &Value) -> [usize; N] {
    usizes(v).try_into().expect("array length")
}

/// Our graph for a small case, from the config in its json.
fn small_graph(case: &str, json: &Value, in_chans: usize) -> Graph {
    let kw = &json["kwargs"];
    let classes = json["num_classes"].as_u64().expect("num_classes") as usize;
    if case.starts_with("efficientvit") {
        let cfg = EfficientVitConfig {
            widths: arr(&kw["widths"]),
            depths: arr(&kw["depths"]),
            head_dim: kw["head_dim"].as_u64().expect("head_dim") as usize,
            expand_ratio: kw["expand_ratio"].as_u64().expect("expand_ratio") as usize,
            head_widths: arr(&kw["head_widths"]),
            dropout: kw["drop_rate"].as_f64().unwrap_or(0.0),
        };
        efficientvit(
            "efficientvit_b0",
            &cfg,
            in_chans,
            classes,
            &ArchOptions::default(),
        )
        .expect("graph")
    } else {
        let cfg = efficientnet_config(kw);
        let variant = kw["variant"].as_str().expect("variant");
        efficientnet(variant, &cfg, in_chans, classes, &ArchOptions::default()).expect("graph")
    }
}

fn efficientnet_config(kw: &Value) -> EfficientNetConfig {
    let base = match kw["variant"].as_str().expect("variant") {
        "efficientnet_b0" => EfficientNetConfig::b0(),
        "mnasnet_100" => EfficientNetConfig::mnasnet_100(),
        other => panic!("no config for {other}"),
    };
    EfficientNetConfig {
        channel_multiplier: kw["channel_multiplier"].as_f64().unwrap_or(1.0),
        depth_multiplier: kw["depth_multiplier"].as_f64().unwrap_or(1.0),
        ..base
    }
}

/// Stride, padding, groups and bias of a convolution.
type ConvLayout = ([usize; 2], [usize; 2], usize, bool);

/// Every difference between our graph and timm's keys and conv layout, as readable lines.
fn structural_differences(graph: &Graph, json: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    let timm: BTreeMap<String, Vec<usize>> = json["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| (k[0].as_str().expect("name").to_string(), usizes(&k[1])))
        .collect();
    for p in &graph.params {
        match timm.get(&p.name) {
            None => diffs.push(format!("ours only: {} {:?}", p.name, p.shape)),
            Some(s) if *s != p.shape => {
                diffs.push(format!("{}: ours {:?}, timm {:?}", p.name, p.shape, s))
            }
            Some(_) => {}
        }
    }
    for (name, shape) in &timm {
        if graph.param(name).is_none() {
            diffs.push(format!("timm only: {name} {shape:?}"));
        }
    }
    // Convolution settings, matched by weight name.
    let convs: BTreeMap<String, ConvLayout> = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                groups,
            } => Some((
                graph.params[*weight].name.clone(),
                (*stride, *padding, *groups, bias.is_some()),
            )),
            _ => None,
        })
        .collect();
    for c in json["conv_layout"].as_array().expect("conv_layout") {
        let name = format!("{}.weight", c["name"].as_str().expect("name"));
        let Some((stride, padding, groups, bias)) = convs.get(&name) else {
            continue; // already reported by the key comparison
        };
        let t_stride: [usize; 2] = arr(&c["stride"]);
        let t_padding: [usize; 2] = arr(&c["padding"]);
        let t_groups = c["groups"].as_u64().expect("groups") as usize;
        let t_bias = c["bias"].as_bool().expect("bias");
        if *stride != t_stride || *padding != t_padding || *groups != t_groups || *bias != t_bias {
            diffs.push(format!(
                "{name}: ours stride {stride:?} padding {padding:?} groups {groups} bias {bias}, \
                 timm stride {t_stride:?} padding {t_padding:?} groups {t_groups} bias {t_bias}"
            ));
        }
    }
    diffs
}

fn io(dir: &Path, case: &str) -> BTreeMap<String, NamedTensor> {
    read_tensors(&dir.join(format!("{case}.io.safetensors")))
        .expect("io file")
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

fn forward(net: &Net, input: &NamedTensor) -> (Vec<usize>, Vec<f32>) {
    let x = net::tensor_from(&input.data, &input.shape, Device::Cpu).expect("input");
    let y = tch::no_grad(|| net.f_forward(&x, false)).expect("forward");
    let shape = y.size().iter().map(|&d| d as usize).collect();
    (shape, net::to_vec_f32(&y).expect("output"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Structure check, weights by name, eval forward, comparison; returns the max difference.
fn check_case(dir: &Path, case: &str, graph: Graph) -> f32 {
    let json = case_json(dir, case);
    let diffs = structural_differences(&graph, &json);
    assert!(
        diffs.is_empty(),
        "{case}: our graph differs from timm's:\n  {}",
        diffs.join("\n  ")
    );
    let mut model = Net::new(graph, Device::Cpu, 0).expect("net");
    model
        .load_weights(&dir.join(format!("{case}.weights.safetensors")))
        .expect("timm weights load by name");
    let io = io(dir, case);
    let (shape, ours) = forward(&model, &io["input"]);
    let want = &io["output"];
    assert_eq!(shape, want.shape, "{case}: output shape");
    let diff = max_abs_diff(&ours, &want.data);
    let gap = max_abs_diff(&io["output_f32"].data, &want.data);
    println!(
        "{case}: max |ours - timm float64| = {diff:.3e} (timm float32 vs float64: {gap:.3e}; \
         bound {TOL:.0e})"
    );
    assert!(diff <= TOL, "{case}: max abs difference {diff:e} > {TOL:e}");
    diff
}

fn small_case(case: &str) -> f32 {
    let dir = golden_dir();
    let json = case_json(&dir, case);
    let graph = small_graph(case, &json, 1);
    check_case(&dir, case, graph)
}

#[test]
fn efficientvit_b0_small_matches_timm() {
    small_case("efficientvit_b0_small");
}

#[test]
fn efficientnet_b0_small_matches_timm() {
    small_case("efficientnet_b0_small");
}

/// timm's MnasNet generator keeps conv_head 1280 wide at any width multiplier; our builder does
/// too since `EfficientNetConfig::scale_features` (commit 784c1c0).
#[test]
fn mnasnet_100_small_matches_timm() {
    small_case("mnasnet_100_small");
}

#[test]
fn rgb_state_dict_imports_like_timm() {
    let dir = golden_dir();
    let case = "efficientvit_b0_small_rgb_import";
    let json = case_json(&dir, case);
    // The weights file is an in_chans=3 state dict; the model has 1 input channel.
    let graph = small_graph(case, &json, 1);
    let mut model = Net::new(graph, Device::Cpu, 0).expect("net");
    let report = model
        .import_timm(&dir.join(format!("{case}.weights.safetensors")))
        .expect("import");
    assert_eq!(
        report.adapted,
        Some(("stem.in_conv.conv.weight".to_string(), 3, 1))
    );
    assert!(
        report.fresh.is_empty() && report.dropped.is_empty(),
        "{report:?}"
    );
    let io = io(&dir, case);
    let stem = net::to_vec_f32(model.param("stem.in_conv.conv.weight").expect("stem"))
        .expect("stem values");
    let stem_diff = max_abs_diff(&stem, &io["stem_in_conv_weight_1ch"].data);
    let (_, ours) = forward(&model, &io["input"]);
    let diff = max_abs_diff(&ours, &io["output"].data);
    println!(
        "{case}: summed stem vs timm's adapt_input_conv: max diff {stem_diff:.3e}; \
         logits max |ours - timm float64| = {diff:.3e}"
    );
    assert_eq!(stem_diff, 0.0);
    assert!(diff <= TOL, "{case}: {diff:e}");
}

/// Importing the 7-class RGB state dict into a 5-class, 2-channel graph: the stem follows timm's
/// repeat-and-scale rule, the classifier stays fresh (warned), everything else is copied.
#[test]
fn import_with_other_class_count_keeps_fresh_classifier() {
    let dir = golden_dir();
    let case = "efficientvit_b0_small_rgb_import";
    let json = case_json(&dir, case);
    let mut json5 = json.clone();
    json5["num_classes"] = 5.into();
    let graph = small_graph(case, &json5, 2);
    let mut model = Net::new(graph, Device::Cpu, 3).expect("net");
    let before = net::to_vec_f32(model.param("head.classifier.4.weight").expect("fc")).expect("fc");
    let path = dir.join(format!("{case}.weights.safetensors"));
    let report = model.import_timm(&path).expect("import");
    let fresh: Vec<&str> = report.fresh.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        fresh,
        ["head.classifier.4.weight", "head.classifier.4.bias"]
    );
    assert!(report.warnings()[0].contains("7 classes in the file, 5 here"));
    let after = net::to_vec_f32(model.param("head.classifier.4.weight").expect("fc")).expect("fc");
    assert_eq!(before, after, "the classifier must keep its fresh init");
    // Stem: [8, 3, 3, 3] -> [8, 2, 3, 3] = (R, G) * 3/2.
    let rgb = read_tensors(&path).expect("read");
    let w = rgb
        .iter()
        .find(|t| t.name == "stem.in_conv.conv.weight")
        .expect("stem");
    let stem = net::to_vec_f32(model.param("stem.in_conv.conv.weight").expect("stem")).expect("v");
    for o in 0..8 {
        for c in 0..2 {
            for j in 0..9 {
                assert_eq!(stem[(o * 2 + c) * 9 + j], w.data[(o * 3 + c) * 9 + j] * 1.5);
            }
        }
    }
    // Everything but the stem (adapted) and the two classifier tensors (fresh) is copied.
    assert_eq!(report.copied.len(), rgb.len() - 3);
}

/// A mis-shaped tensor in the body, a missing one and an unexpected one are all listed, with the
/// file, and nothing is changed.
#[test]
fn import_errors_list_every_problem() {
    let dir = golden_dir();
    let case = "efficientvit_b0_small";
    let json = case_json(&dir, case);
    let mut tensors = read_tensors(&dir.join(format!("{case}.weights.safetensors"))).expect("r");
    tensors.retain(|t| t.name != "stages.0.blocks.0.main.depth_conv.norm.bias");
    for t in &mut tensors {
        if t.name == "stages.1.blocks.1.main.point_conv.conv.weight" {
            t.shape = vec![t.shape[0], t.shape[1] / 2, 2, 1];
        }
    }
    tensors.push(NamedTensor {
        name: "head.extra.weight".into(),
        shape: vec![2],
        data: vec![0.0, 1.0],
    });
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("import_errors.safetensors");
    birdclef_models::checkpoint::write_tensors(&tmp, &tensors, None).expect("write");
    let mut model = Net::new(small_graph(case, &json, 1), Device::Cpu, 0).expect("net");
    let before = model.tensors().expect("tensors");
    let err = model.import_timm(&tmp).expect_err("bad file").to_string();
    println!("{err}");
    assert!(err.contains("import_errors.safetensors"), "{err}");
    assert!(
        err.contains("missing stages.0.blocks.0.main.depth_conv.norm.bias"),
        "{err}"
    );
    assert!(
        err.contains("stages.1.blocks.1.main.point_conv.conv.weight has shape"),
        "{err}"
    );
    assert!(err.contains("unexpected head.extra.weight"), "{err}");
    assert_eq!(model.tensors().expect("tensors"), before);
    std::fs::remove_file(&tmp).ok();
}

/// A timm classifier state dict imported into the same architecture with the SED head: the
/// reference head's tensors are ignored (listed), the SED convs stay fresh.
#[test]
fn import_into_sed_head_ignores_the_reference_head() {
    let dir = golden_dir();
    let case = "efficientnet_b0_small";
    let json = case_json(&dir, case);
    let cfg = efficientnet_config(&json["kwargs"]);
    let graph = efficientnet(
        "efficientnet_b0",
        &cfg,
        1,
        7,
        &ArchOptions {
            head: Head::Sed,
            ..ArchOptions::default()
        },
    )
    .expect("graph");
    let mut model = Net::new(graph, Device::Cpu, 0).expect("net");
    let report = model
        .import_timm(&dir.join(format!("{case}.weights.safetensors")))
        .expect("import");
    assert_eq!(report.dropped, ["classifier.bias", "classifier.weight"]);
    let fresh: Vec<&str> = report.fresh.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        fresh,
        [
            "sed.att.weight",
            "sed.att.bias",
            "sed.cla.weight",
            "sed.cla.bias"
        ]
    );
}

fn full_case(name: &str) -> Option<f32> {
    let dir = full_dir();
    let case = format!("{name}_full");
    if !dir.join(format!("{case}.json")).exists() {
        println!(
            "skipped {case}: {} does not exist (run make_golden.py --full)",
            dir.display()
        );
        return None;
    }
    let json = case_json(&dir, &case);
    let model = json["kwargs"]["model_name"].as_str().expect("model_name");
    let in_chans = json["in_chans"].as_u64().expect("in_chans") as usize;
    let classes = json["num_classes"].as_u64().expect("num_classes") as usize;
    let graph = nets::build(model, in_chans, classes, Head::Classifier).expect("graph");
    Some(check_case(&dir, &case, graph))
}

#[test]
fn efficientvit_b0_full_matches_timm() {
    if let Some(d) = full_case("efficientvit_b0") {
        println!("full efficientvit_b0 (182 classes, 224x224): max diff {d:.3e}");
    }
}

#[test]
fn efficientnet_b0_full_matches_timm() {
    full_case("efficientnet_b0");
}

#[test]
fn mnasnet_100_full_matches_timm() {
    full_case("mnasnet_100");
}

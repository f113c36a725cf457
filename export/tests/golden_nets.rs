//! IR → ONNX → ONNX Runtime against timm: for every golden case of
//! `models/tests/golden/nets`, the graph built from the case's json is emitted with timm's
//! weights, run in ONNX Runtime on the case's input and compared with timm's float64 logits.
//! Each emitted model also passes `onnx.checker.check_model(full_check=True)`.

mod common;

use birdclef_export::emit::{self, emit, emit_model};
use birdclef_export::run_onnx;
use birdclef_models::card::Card;
use birdclef_models::card::{ONNX_CARD_KEY, ONNX_LABELS_KEY};
use birdclef_models::frontend::FrontendConfig;
use common::{card_64x96, full_golden_dir, golden_dir, max_abs_diff, onnx_check, Case, TempDir};

const TOLERANCE: f32 = 1e-4;

/// Emit, run, compare, check; returns the max difference.
fn verify_case(case: &Case, card: Option<&Card>) -> f32 {
    let name = &case.name;
    let graph = case.graph();
    let mismatch = case.key_mismatch(&graph);
    assert!(
        mismatch.is_empty(),
        "{name}: the IR graph and timm's state_dict disagree:\n  {}",
        mismatch.join("\n  ")
    );
    let model = emit_model(&graph, &case.weights, card).expect("emit");
    let ops: Vec<String> = emit::op_types(&model).into_iter().collect();
    let bytes = emit(&graph, &case.weights, card).expect("emit");
    let input = case.input();
    let got = run_onnx(&bytes, &input, None).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = case.output();
    assert_eq!(got.shape, want.shape, "{name}: output shape");
    let diff = max_abs_diff(&got.data, &want.data);
    println!(
        "{name}: input {:?}, {} bytes of ONNX, max |onnxruntime - timm float64| = {diff:.3e} \
         (bound {TOLERANCE:e})\n  ops: {}",
        input.shape,
        bytes.len(),
        ops.join(", ")
    );
    assert!(
        diff <= TOLERANCE,
        "{name}: max difference {diff:e} > {TOLERANCE:e}"
    );

    let tmp = TempDir::new("golden");
    let file = tmp.path().join(format!("{name}.onnx"));
    std::fs::write(&file, &bytes).expect("write onnx");
    match onnx_check(&file) {
        Ok(Some(msg)) => println!("  {name}: {msg}"),
        Ok(None) => {
            println!("  SKIPPED onnx.checker: no .env/venv/bin/python (run scripts/setup.sh)")
        }
        Err(e) => panic!("{name}: {e}"),
    }
    diff
}

#[test]
fn efficientvit_b0_small_matches_timm() {
    verify_case(&Case::load(&golden_dir(), "efficientvit_b0_small"), None);
}

#[test]
fn efficientnet_b0_small_matches_timm() {
    verify_case(&Case::load(&golden_dir(), "efficientnet_b0_small"), None);
}

#[test]
fn mnasnet_100_small_matches_timm() {
    verify_case(&Case::load(&golden_dir(), "mnasnet_100_small"), None);
}

/// timm's 3-channel → 1-channel import (`adapt_input_conv` sums the R, G, B filters): with the
/// summed stem weight stored in the io file, the rest of the 3-channel state dict fits the
/// 1-channel graph unchanged.
#[test]
fn efficientvit_b0_small_rgb_import_matches_timm() {
    let mut case = Case::load(&golden_dir(), "efficientvit_b0_small_rgb_import");
    let stem = case.tensor("stem_in_conv_weight_1ch");
    let w = case
        .weights
        .iter_mut()
        .find(|t| t.name == "stem.in_conv.conv.weight")
        .expect("stem weight");
    assert_eq!(w.shape, vec![8, 3, 3, 3]);
    w.shape = stem.shape;
    w.data = stem.data;
    verify_case(&case, None);
}

/// The full-size timm models (224×224, 182 classes), emitted with the nvbird224 card (which
/// fixes H = W = 224). Their golden files are git-ignored; skipped where absent.
#[test]
fn full_size_models_match_timm_when_present() {
    let dir = full_golden_dir();
    for name in [
        "efficientvit_b0_full",
        "efficientnet_b0_full",
        "mnasnet_100_full",
    ] {
        if !dir.join(format!("{name}.json")).exists() {
            println!(
                "SKIPPED {name}: no {} (make_golden.py --full writes it)",
                dir.display()
            );
            continue;
        }
        let case = Case::load(&dir, name);
        let mut card = Card::frontend_only(name, FrontendConfig::nvbird224());
        card.architecture = Some(case.graph().name.clone());
        card.labels = (0..case.num_classes())
            .map(|i| format!("sp{i:03}"))
            .collect();
        verify_case(&case, Some(&card));
    }
}

#[test]
fn metadata_holds_the_card_and_the_labels() {
    let case = Case::load(&golden_dir(), "efficientvit_b0_small");
    let graph = case.graph();
    let card = card_64x96("student-fold0", 7);
    let bytes = emit(&graph, &case.weights, Some(&card)).expect("emit");

    let model = emit::decode(&bytes).expect("decode");
    let json = emit::metadata(&model, ONNX_CARD_KEY).expect("card key");
    let back = Card::from_json(json).expect("the stored card parses");
    assert_eq!(back, card);
    assert_eq!(emit::read_card(&model).expect("read"), Some(card.clone()));
    let labels: Vec<String> =
        serde_json::from_str(emit::metadata(&model, ONNX_LABELS_KEY).expect("labels"))
            .expect("json");
    assert_eq!(labels, card.labels);
    assert_eq!(model.producer_name.as_deref(), Some("birdclef-export"));
    assert_eq!(model.ir_version, Some(8));

    // The card fixes H and W of the input; the batch stays symbolic.
    let g = model.graph.as_ref().expect("graph");
    let dims = match &g.input[0].r#type.as_ref().and_then(|t| t.value.clone()) {
        Some(birdclef_export::onnx_proto::type_proto::Value::TensorType(t)) => {
            t.shape.clone().expect("shape").dim
        }
        None => panic!("no input type"),
    };
    use birdclef_export::onnx_proto::tensor_shape_proto::dimension::Value as D;
    let dims: Vec<_> = dims.into_iter().map(|d| d.value.expect("dim")).collect();
    assert_eq!(
        dims,
        vec![
            D::DimParam("batch".into()),
            D::DimValue(1),
            D::DimValue(64),
            D::DimValue(96)
        ]
    );

    // With fixed H, W the model still runs and still matches timm.
    let got = run_onnx(&bytes, &case.input(), None).expect("run");
    let diff = max_abs_diff(&got.data, &case.output().data);
    assert!(diff <= TOLERANCE, "{diff}");

    // Python's onnx reads the same metadata.
    let tmp = TempDir::new("meta");
    let file = tmp.path().join("m.onnx");
    std::fs::write(&file, &bytes).expect("write");
    if let Some(python) = common::venv_python() {
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import sys, onnx, json; m = onnx.load(sys.argv[1]); \
                 d = {p.key: p.value for p in m.metadata_props}; \
                 print(json.loads(d['birdclef.card'])['name'], len(json.loads(d['birdclef.labels'])))",
            ])
            .arg(&file)
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "student-fold0 7"
        );
    }
}

#[test]
fn a_model_without_a_card_has_symbolic_height_and_width_and_no_metadata() {
    let case = Case::load(&golden_dir(), "mnasnet_100_small");
    let model = emit_model(&case.graph(), &case.weights, None).expect("emit");
    assert!(model.metadata_props.is_empty());
    assert_eq!(emit::read_card(&model).expect("read"), None);
    // A different spatial size runs too (fully convolutional + dynamic H, W).
    let input = birdclef_models::checkpoint::NamedTensor {
        name: "input".into(),
        shape: vec![3, 1, 32, 40],
        data: (0..3 * 32 * 40)
            .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
            .collect(),
    };
    let bytes = emit(&case.graph(), &case.weights, None).expect("emit");
    let out = run_onnx(&bytes, &input, None).expect("run");
    assert_eq!(out.shape, vec![3, 7]);
}

//! The op mappings the golden networks do not reach (SED head: ReduceMean, Tanh, Softmax, Mul,
//! ReduceSum, Flatten; the activations Relu6, Hardsigmoid, Sigmoid, Tanh, SiLU) checked against
//! plain loops, and every registered architecture spec (both heads) emitted, checked by
//! `onnx.checker` and run in ONNX Runtime.

mod common;

use birdclef_export::emit::{self, emit, emit_model};
use birdclef_export::run_onnx;
use birdclef_models::checkpoint::NamedTensor;
use birdclef_models::ir::{Activation, Graph, GraphBuilder};
use birdclef_models::nets::{self, ARCHITECTURES};
use common::{max_abs_diff, onnx_check, TempDir};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn weights(g: &Graph) -> Vec<NamedTensor> {
    g.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // Roughly variance-preserving: conv/linear weights scaled by their fan-in, norm
            // scales near 1, shifts and means near 0, variances in [1, 1.5).
            let v = values(p.numel(), i as u64 + 1);
            let fan_in: usize = p.shape[1..].iter().product();
            let data = v
                .into_iter()
                .map(|v| match p.shape.len() {
                    1 if p.name.ends_with("running_var") => 1.0 + 0.5 * v.abs(),
                    1 if p.name.ends_with("weight") => 1.0 + 0.1 * v,
                    1 => 0.1 * v,
                    _ => v * (3.0 / fan_in.max(1) as f32).sqrt(),
                })
                .collect();
            NamedTensor {
                name: p.name.clone(),
                shape: p.shape.clone(),
                data,
            }
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, scale: f32) -> NamedTensor {
    let n = shape.iter().product();
    NamedTensor {
        name: "input".into(),
        shape: shape.to_vec(),
        data: values(n, seed).into_iter().map(|v| v * scale).collect(),
    }
}

fn check_file(bytes: &[u8], name: &str) {
    let t = TempDir::new("ops");
    let file = t.path().join(format!("{name}.onnx"));
    std::fs::write(&file, bytes).expect("write");
    match onnx_check(&file) {
        Ok(Some(msg)) => println!("  {name}: {msg}"),
        Ok(None) => println!("  SKIPPED onnx.checker: no .env/venv/bin/python"),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn activations_match_their_definitions() {
    let relu6 = |x: f32| x.clamp(0.0, 6.0);
    type Definition = fn(f32) -> f32;
    let cases: [(Activation, Definition); 7] = [
        (Activation::Relu, |x| x.max(0.0)),
        (Activation::Relu6, |x| x.clamp(0.0, 6.0)),
        (Activation::Hardswish, |x| {
            x * (x + 3.0).clamp(0.0, 6.0) / 6.0
        }),
        (Activation::Hardsigmoid, |x| (x + 3.0).clamp(0.0, 6.0) / 6.0),
        (Activation::Silu, |x| x / (1.0 + (-x).exp())),
        (Activation::Sigmoid, |x| 1.0 / (1.0 + (-x).exp())),
        (Activation::Tanh, f32::tanh),
    ];
    assert_eq!(relu6(7.0), 6.0);
    let (n, c, h, w) = (2, 3, 4, 5);
    for (act, f) in cases {
        let mut b = GraphBuilder::new("act", c);
        let x = b.input();
        let y = b.act("act", x, act);
        let y = b.global_avg_pool(y);
        let g = b.finish(y).expect("graph");
        let input = tensor(&[n, c, h, w], 7, 8.0);
        let bytes = emit(&g, &[], None).expect("emit");
        let got = run_onnx(&bytes, &input, None).expect("run");
        let want: Vec<f32> = input
            .data
            .chunks(h * w)
            .map(|plane| {
                plane.iter().map(|&v| f64::from(f(v))).sum::<f64>() as f32 / (h * w) as f32
            })
            .collect();
        let d = max_abs_diff(&got.data, &want);
        println!("{act:?}: max diff {d:.2e}");
        assert!(d < 1e-5, "{act:?}: {d}");
    }
}

/// conv 1×1 → SED head, against loops.
#[test]
fn sed_head_matches_loops() {
    let (n, c, f, t, k) = (2, 3, 4, 6, 5);
    let mut b = GraphBuilder::new("sed", c);
    let x = b.input();
    let y = nets::sed_head(&mut b, x, k, 0.3);
    let g = b.finish(y).expect("graph");
    let w = weights(&g);
    let input = tensor(&[n, c, f, t], 3, 2.0);
    let bytes = emit(&g, &w, None).expect("emit");
    check_file(&bytes, "sed");
    let got = run_onnx(&bytes, &input, None).expect("run");
    assert_eq!(got.shape, vec![n, k]);

    let param = |name: &str| &w.iter().find(|p| p.name == name).expect("param").data;
    let (aw, ab, cw, cb) = (
        param("sed.att.weight"),
        param("sed.att.bias"),
        param("sed.cla.weight"),
        param("sed.cla.bias"),
    );
    let at =
        |i: usize, ch: usize, fi: usize, ti: usize| input.data[((i * c + ch) * f + fi) * t + ti];
    let mut want = vec![0.0f32; n * k];
    for i in 0..n {
        // Mean over frequency: [C, T].
        let pooled: Vec<Vec<f32>> = (0..c)
            .map(|ch| {
                (0..t)
                    .map(|ti| (0..f).map(|fi| at(i, ch, fi, ti)).sum::<f32>() / f as f32)
                    .collect()
            })
            .collect();
        for kk in 0..k {
            let lin = |wt: &[f32], bias: &[f32], ti: usize| {
                bias[kk]
                    + (0..c)
                        .map(|ch| wt[kk * c + ch] * pooled[ch][ti])
                        .sum::<f32>()
            };
            let att: Vec<f32> = (0..t).map(|ti| lin(aw, ab, ti).tanh()).collect();
            let m = att.iter().copied().fold(f32::MIN, f32::max);
            let z: f32 = att.iter().map(|a| (a - m).exp()).sum();
            want[i * k + kk] = (0..t)
                .map(|ti| (att[ti] - m).exp() / z * lin(cw, cb, ti))
                .sum();
        }
    }
    let d = max_abs_diff(&got.data, &want);
    println!("sed head: max diff {d:.2e}");
    assert!(d < 1e-5, "{d}");
}

/// Every registered architecture with both heads: emitted, checked, run.
#[test]
fn every_architecture_spec_emits_checks_and_runs() {
    for name in ARCHITECTURES {
        for spec in [name.to_string(), format!("{name}+sed")] {
            let g = nets::build_spec(&spec, 1, 11).expect("graph");
            let model = emit_model(&g, &weights(&g), None).expect("emit");
            let ops: Vec<String> = emit::op_types(&model).into_iter().collect();
            println!("{spec}: {}", ops.join(", "));
            let bytes = emit(&g, &weights(&g), None).expect("emit");
            check_file(&bytes, &spec);
            let input = tensor(&[2, 1, 64, 96], 11, 1.0);
            let out = run_onnx(&bytes, &input, None).expect("run");
            assert_eq!(out.shape, vec![2, 11], "{spec}");
            assert!(out.data.iter().all(|v| v.is_finite()), "{spec}");
        }
    }
}

#[test]
fn stochastic_depth_leaves_the_exported_model_unchanged() {
    for name in ARCHITECTURES {
        let plain = nets::build_spec(name, 1, 3).expect("plain");
        let deep = nets::build_spec_with(name, 1, 3, 0.3).expect("drop path");
        assert_ne!(
            plain.nodes.len(),
            deep.nodes.len(),
            "{name}: DropPath nodes"
        );
        let w = weights(&plain);
        let a = emit(&plain, &w, None).expect("plain emits");
        let b = emit(&deep, &w, None).expect("drop path emits");
        assert_eq!(a, b, "{name}: the ONNX bytes differ");
    }
}

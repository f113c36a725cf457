//! Helpers shared by the export tests: golden cases (timm weights and logits), graphs built
//! from a case's json, temporary directories and the Python ONNX checker.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use birdclef_models::card::Card;
use birdclef_models::checkpoint::{read_tensors, NamedTensor};
use birdclef_models::frontend::FrontendConfig;
use birdclef_models::ir::Graph;
use birdclef_models::nets::efficientnet::{efficientnet, EfficientNetConfig};
use birdclef_models::nets::efficientvit::{efficientvit, EfficientVitConfig};
use birdclef_models::nets::ArchOptions;
use serde_json::Value;

/// The workspace root.
/// An efficientvit_b0 card whose frontend gives the golden cases' 64 x 96 input (5 s at
/// 32 kHz, hop 1680 -> 96 centred frames, 64 mels), with labels `bird0..`.
pub fn card_64x96(name: &str, labels: usize) -> Card {
    let mut frontend = FrontendConfig::kefir128();
    frontend.n_mels = 64;
    frontend.n_fft = 2048;
    frontend.win_length = 2048;
    frontend.hop_length = 1680;
    let mut card = Card::frontend_only(name, frontend);
    assert_eq!(card.input_shape, [1, 64, 96]);
    card.architecture = Some("efficientvit_b0".into());
    card.labels = (0..labels).map(|i| format!("bird{i}")).collect();
    card
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The committed golden files of the networks.
pub fn golden_dir() -> PathBuf {
    root().join("models/tests/golden/nets")
}

/// The full-size golden files (git-ignored; present only where make_golden.py --full ran).
pub fn full_golden_dir() -> PathBuf {
    root().join(".dev/golden-nets-full")
}

/// One golden case: its json, the timm weights (integer tensors skipped) and the io tensors.
pub struct Case {
    pub name: String,
    pub json: Value,
    pub weights: Vec<NamedTensor>,
    pub io: Vec<NamedTensor>,
}

impl Case {
    pub fn load(dir: &Path, name: &str) -> Case {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json")))
            .unwrap_or_else(|e| panic!("{name}.json: {e}"));
        let json: Value = serde_json::from_str(&text).expect("case json");
        let weights = read_tensors(&dir.join(format!("{name}.weights.safetensors")))
            .unwrap_or_else(|e| panic!("{e}"));
        let io = read_tensors(&dir.join(format!("{name}.io.safetensors")))
            .unwrap_or_else(|e| panic!("{e}"));
        Case {
            name: name.to_string(),
            json,
            weights,
            io,
        }
    }

    pub fn tensor(&self, name: &str) -> NamedTensor {
        self.io
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{}: no io tensor {name}", self.name))
            .clone()
    }

    pub fn input(&self) -> NamedTensor {
        self.tensor("input")
    }

    pub fn output(&self) -> NamedTensor {
        self.tensor("output")
    }

    pub fn num_classes(&self) -> usize {
        self.json["num_classes"].as_u64().expect("num_classes") as usize
    }

    pub fn in_chans(&self) -> usize {
        self.json["in_chans"].as_u64().expect("in_chans") as usize
    }

    fn kwarg_f64(&self, key: &str) -> Option<f64> {
        self.json["kwargs"][key].as_f64()
    }

    /// The IR graph of this case, built from its json as the case describes the timm model.
    pub fn graph(&self) -> Graph {
        let n = self.name.as_str();
        let (classes, chans) = (self.num_classes(), self.in_chans());
        let built = if n.starts_with("efficientvit") {
            let k = &self.json["kwargs"];
            let arr = |key: &str| -> Vec<usize> {
                match k[key].as_array() {
                    Some(a) => a
                        .iter()
                        .map(|v| v.as_u64().expect("int") as usize)
                        .collect(),
                    None => Vec::new(),
                }
            };
            let mut cfg = EfficientVitConfig::b0();
            let hw = arr("head_widths");
            if hw.len() == 2 {
                cfg.head_widths = [hw[0], hw[1]];
            }
            let w = arr("widths");
            if w.len() == 5 {
                cfg.widths.copy_from_slice(&w);
            }
            let d = arr("depths");
            if d.len() == 5 {
                cfg.depths.copy_from_slice(&d);
            }
            efficientvit(
                "efficientvit_b0",
                &cfg,
                chans,
                classes,
                &ArchOptions::default(),
            )
        } else {
            let (base, name) = if n.starts_with("mnasnet_100") {
                (EfficientNetConfig::mnasnet_100(), "mnasnet_100")
            } else {
                (EfficientNetConfig::b0(), "efficientnet_b0")
            };
            let cfg = EfficientNetConfig {
                channel_multiplier: self.kwarg_f64("channel_multiplier").unwrap_or(1.0),
                depth_multiplier: self.kwarg_f64("depth_multiplier").unwrap_or(1.0),
                ..base
            };
            efficientnet(name, &cfg, chans, classes, &ArchOptions::default())
        };
        built.unwrap_or_else(|e| panic!("{n}: {e}"))
    }

    /// Differences between the graph's parameters and the timm keys, if any.
    pub fn key_mismatch(&self, graph: &Graph) -> Vec<String> {
        let mut out = Vec::new();
        for p in &graph.params {
            match self.weights.iter().find(|t| t.name == p.name) {
                None => out.push(format!("graph has {} {:?}, timm does not", p.name, p.shape)),
                Some(t) if t.shape != p.shape => out.push(format!(
                    "{}: graph {:?}, timm {:?}",
                    p.name, p.shape, t.shape
                )),
                Some(_) => {}
            }
        }
        for t in &self.weights {
            if graph.param(&t.name).is_none() {
                out.push(format!(
                    "timm has {} {:?}, the graph does not",
                    t.name, t.shape
                ));
            }
        }
        out
    }
}

/// The largest |a - b| (NaN counts as infinite).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "birdclef-export-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The project's Python (it has `onnx`), if setup.sh made it.
pub fn venv_python() -> Option<PathBuf> {
    let p = root().join(".env/venv/bin/python");
    p.exists().then_some(p)
}

/// Run `onnx.checker.check_model(model, full_check=True)` on `file`. `Ok(None)` when the project
/// Python is absent (the caller prints the skip); `Err` with the checker's message on failure.
pub fn onnx_check(file: &Path) -> Result<Option<String>, String> {
    let Some(python) = venv_python() else {
        return Ok(None);
    };
    const SCRIPT: &str = "import sys, onnx\n\
        m = onnx.load(sys.argv[1])\n\
        onnx.checker.check_model(m, full_check=True)\n\
        print('onnx', onnx.__version__, 'check_model(full_check=True): ok;', \
        'ir_version', m.ir_version, 'opset', m.opset_import[0].version)";
    let out = Command::new(python)
        .args(["-c", SCRIPT])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run the project python: {e}"))?;
    if out.status.success() {
        Ok(Some(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    } else {
        Err(format!(
            "onnx.checker failed on {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

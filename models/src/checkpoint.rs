//! The checkpoint layout shared by `birdclef-train` (writes) and `birdclef-export` (reads).
//!
//! A checkpoint is a directory:
//!
//! | file | content |
//! | --- | --- |
//! | `card.json` | the [`Card`]: labels, frontend, input shape, architecture spec, provenance |
//! | `weights.safetensors` | every parameter of the graph (trainable and BatchNorm buffers), `f32`, keyed by the IR parameter names |
//! | `reference.safetensors` | `input` `[B, C, H, W]` and `output` `[B, classes]`: a batch and the logits the training framework computed for it in eval mode; export verifies against it |
//!
//! Training adds its own files (optimiser state, history) beside these. The architecture is
//! rebuilt from the card's `architecture` spec with [`crate::nets::build_spec`], so weights and
//! graph always agree by name and shape ([`check_weights`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::card::Card;
use crate::ir::Graph;
use crate::nets::ArchError;

/// File name of the model card inside a checkpoint.
pub const CARD_FILE: &str = "card.json";
/// File name of the weights inside a checkpoint.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the reference batch inside a checkpoint.
pub const REFERENCE_FILE: &str = "reference.safetensors";

/// A named `f32` tensor held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Name (a parameter name or `input` / `output`).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Why a checkpoint or tensor file could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Operating-system error.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Not a valid safetensors file, or an unsupported element type.
    #[error("{path}: not a usable safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The card is missing or invalid.
    #[error(transparent)]
    Card(#[from] crate::card::CardError),
    /// An output could not be written (the error names it).
    #[error(transparent)]
    Output(#[from] crate::fsio::OutputError),
    /// The card cannot describe a model (no labels, a bad input shape).
    #[error("{path}: {problem}")]
    InvalidCard {
        /// The card file.
        path: PathBuf,
        /// Why (part of the message, so not also a `source`: `{:#}` would repeat it).
        problem: crate::card::CardProblem,
    },
    /// The card's architecture cannot be built.
    #[error("{path}: {cause}")]
    Architecture {
        /// The card file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare; part of the message, so not also a `source`:
        /// `{:#}` would repeat it).
        cause: Box<ArchError>,
    },
    /// Weights and graph disagree.
    #[error("{path}: weights do not fit the architecture: {reason}")]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Missing, unexpected or mis-shaped tensors, all of them.
        reason: String,
    },
}

/// Read every tensor of a safetensors file as `f32` (F32, F64, F16 and BF16 are converted;
/// integer tensors such as BatchNorm's `num_batches_tracked` are skipped).
pub fn read_tensors(path: &Path) -> Result<Vec<NamedTensor>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|cause| CheckpointError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let fmt = |reason: String| CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::BOOL => continue,
            other => {
                return Err(fmt(format!(
                    "tensor {name:?} has unsupported type {other:?}"
                )))
            }
        };
        out.push(NamedTensor {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let shift = f.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | (((f << shift) & 0x3ff) << 13)
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Write `f32` tensors as a safetensors file, atomically, with optional string metadata.
pub fn write_tensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<BTreeMap<String, String>>,
) -> Result<(), CheckpointError> {
    let fmt = |reason: String| CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| fmt(format!("tensor {:?}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let buf = safetensors::serialize(views, metadata.map(|m| m.into_iter().collect()))
        .map_err(|e| fmt(e.to_string()))?;
    Ok(crate::fsio::write_atomic(path, &buf)?)
}

/// Check that `tensors` hold exactly the graph's parameters with the graph's shapes; the error
/// lists every missing, unexpected and mis-shaped tensor.
pub fn check_weights(
    graph: &Graph,
    tensors: &[NamedTensor],
    path: &Path,
) -> Result<(), CheckpointError> {
    let by_name: BTreeMap<&str, &NamedTensor> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut problems = Vec::new();
    for p in &graph.params {
        match by_name.get(p.name.as_str()) {
            None => problems.push(format!("missing {} {:?}", p.name, p.shape)),
            Some(t) if t.shape != p.shape => problems.push(format!(
                "{} has shape {:?}, the architecture needs {:?}",
                p.name, t.shape, p.shape
            )),
            Some(_) => {}
        }
    }
    for t in tensors {
        if graph.param(&t.name).is_none() {
            problems.push(format!("unexpected {} {:?}", t.name, t.shape));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: problems.join("; "),
        })
    }
}

/// A checkpoint read from disk: its card, the graph its card describes, and its weights.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The model card.
    pub card: Card,
    /// The architecture, rebuilt from the card.
    pub graph: Graph,
    /// The weights, checked against the graph.
    pub weights: Vec<NamedTensor>,
}

impl Checkpoint {
    /// Read and check a checkpoint directory.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let card_path = dir.join(CARD_FILE);
        let card = Card::load(&card_path)?;
        card.validate_for_model()
            .map_err(|problem| CheckpointError::InvalidCard {
                path: card_path.clone(),
                problem,
            })?;
        let graph = graph_for_card(&card).map_err(|cause| CheckpointError::Architecture {
            path: card_path.clone(),
            cause: Box::new(cause),
        })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = read_tensors(&weights_path)?;
        check_weights(&graph, &weights, &weights_path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            card,
            graph,
            weights,
        })
    }

    /// The reference batch (`input`, `output`) stored with the checkpoint.
    pub fn reference(&self) -> Result<(NamedTensor, NamedTensor), CheckpointError> {
        let path = self.dir.join(REFERENCE_FILE);
        let mut tensors = read_tensors(&path)?;
        let mut take = |name: &str| {
            tensors
                .iter()
                .position(|t| t.name == name)
                .map(|i| tensors.swap_remove(i))
                .ok_or_else(|| CheckpointError::Format {
                    path: path.clone(),
                    reason: format!("no tensor named {name:?}"),
                })
        };
        let input = take("input")?;
        let output = take("output")?;
        Ok((input, output))
    }
}

/// The graph a card describes: its architecture spec, input channels and label count.
pub fn graph_for_card(card: &Card) -> Result<Graph, ArchError> {
    let spec = card.architecture.as_deref().ok_or(ArchError::Unnamed)?;
    crate::nets::build_spec(spec, card.input_shape[0], card.labels.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_and_mismatches_are_listed() {
        let dir = std::env::temp_dir().join(format!("ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("w.safetensors");
        let t = vec![
            NamedTensor {
                name: "a.weight".into(),
                shape: vec![2, 3],
                data: (0..6).map(|v| v as f32).collect(),
            },
            NamedTensor {
                name: "b".into(),
                shape: vec![1],
                data: vec![-1.5],
            },
        ];
        write_tensors(&path, &t, None).expect("write");
        assert_eq!(read_tensors(&path).expect("read"), t);

        let g = crate::nets::build_spec("mnasnet_100", 1, 3).expect("graph");
        let err = check_weights(&g, &t, &path)
            .expect_err("mismatch")
            .to_string();
        assert!(err.contains("missing conv_stem.weight"), "{err}");
        assert!(err.contains("unexpected a.weight"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn half_precision_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }
}

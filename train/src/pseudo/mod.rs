//! `birdclef-train pseudo-label`: a teacher ensemble labels unlabeled soundscapes, window by window,
//! into one HDF5 file that students are distilled from.
//!
//! Teachers are checkpoint directories (run with libtorch on the chosen device) or ONNX files
//! written by `birdclef-export` (run with ONNX Runtime on the CPU), mixed freely as long as their
//! cards agree on the labels and on how audio is cut into windows. Teachers with different
//! frontends are allowed; each frontend is computed once per soundscape. A window's probability
//! is the mean over teachers of the sigmoid of their logits.
//!
//! Every soundscape is computed on its own: decoded as a stream and cut into pieces of
//! `batch_size` windows from its start, one forward pass per piece and teacher. So memory stays
//! flat for soundscapes of any length, and the result for a file does not depend on which other
//! files a run holds: shards merged with [`merge`] equal an unsharded run.
//!
//! # Resuming
//!
//! Finished soundscapes are kept as small safetensors files in `<out>.parts/` (one per file,
//! written atomically), next to a `key` file naming the teachers and the input files. A killed
//! run started again with the same arguments skips every soundscape already there; a run with
//! other teachers or files starts the parts afresh. The HDF5 file is written at the end
//! (temporary file + rename) and the parts are then removed.
//!
//!
//! [`label`] runs the teachers, [`table`] is the HDF5 file (its layout, reading, writing and
//! merging shards), [`load`] reads it back as soft targets for distillation.

pub mod label;
pub mod load;
pub mod table;

pub use label::{pseudo_label, PseudoLabelOptions, PseudoSummary, Teacher};
pub use table::{merge, Table, FORMAT_VERSION};

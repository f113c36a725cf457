//! `birdclef-models`: the contract shared by `birdclef-train`, `birdclef-export` and `birdclef-infer`.
//!
//! Everything that decides how audio becomes a model input lives here, once, so that the three
//! binaries cannot disagree: decoding and resampling ([`audio`]), the log-mel frontend
//! ([`frontend`]), the model card that travels with every checkpoint and ONNX file ([`card`]),
//! the competition metrics ([`metrics`]), output files written safely ([`fsio`]), `.npy` files ([`npy`]) and synthetic audio for
//! demos and tests ([`synth`]).
//! No libtorch and no ONNX Runtime here.
#![deny(unsafe_code)]

pub mod audio;
pub mod card;
pub mod checkpoint;
pub mod dsp;
pub mod frontend;
pub mod fsio;
pub mod ir;
pub mod metrics;
pub mod nets;
pub mod npy;
pub mod power;
pub mod rng;
pub mod synth;

//! `birdclef-train` as a library: the tch interpreter of the layer-graph IR ([`net`]), checkpoint
//! creation ([`init`]) and the choice of compute device ([`device`]). The binary in `main.rs` is a
//! thin command-line layer over these.
#![deny(unsafe_code)]

pub mod atomic_dir;
pub mod batch;
pub mod config;
pub mod data;
pub mod device;
pub mod distill;
pub mod fit;
pub mod init;
pub mod net;
pub mod pipeline;
pub mod pseudo;
pub mod runs;

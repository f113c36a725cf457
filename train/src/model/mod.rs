//! The network side of training: the tch interpreter of the layer-graph IR ([`net`]), checkpoint
//! creation ([`init`]) and the choice of compute device ([`device`]).

pub mod device;
pub mod init;
pub mod net;

//! File errors shared by the submission, scoring, sharding and detection modules. Each names the
//! file and prints its cause once (the cause is part of the message, not a separate source, so
//! `anyhow`'s `{:#}` does not repeat it).
use std::path::PathBuf;

/// Reading, parsing or writing a file failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The operating system refused.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The CSV reader or writer failed.
    #[error("{path}: {cause}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: csv::Error,
    },
    /// An output could not be written (the error names it).
    #[error(transparent)]
    Output(#[from] birdclef_models::fsio::OutputError),
    /// The file does not have the expected content.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

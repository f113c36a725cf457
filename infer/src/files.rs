//! File errors shared by the submission, scoring, sharding and detection modules. Each names the
//! file and prints its cause once (the cause is part of the message, not a separate source, so
//! `anyhow`'s `{:#}` does not repeat it).
use std::path::{Path, PathBuf};

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

/// Open the input file `path` for reading; a directory is refused by name (the system would
/// only say "Is a directory" on the first read).
pub(crate) fn open_input(path: &Path) -> Result<std::fs::File, FileError> {
    if path.is_dir() {
        return Err(FileError::Format {
            path: path.to_path_buf(),
            reason: "is a directory, not a CSV file".into(),
        });
    }
    std::fs::File::open(path).map_err(|cause| FileError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// [`open_input`] and read the whole file as text.
pub(crate) fn read_input(path: &Path) -> Result<String, FileError> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open_input(path)?, &mut text).map_err(|cause| {
        FileError::Io {
            path: path.to_path_buf(),
            cause,
        }
    })?;
    Ok(text)
}

//! NumPy `.npy` files (format version 1.0, little-endian `float32`, C order), written atomically.
//!
//! The feature tensors `birdclef-infer features` writes are `.npy` so users can diff them against
//! their Python pipeline with `np.load`; golden files made by the committed Python scripts are read
//! back with [`read_f32`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

/// Errors reading or writing `.npy` files. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// Operating-system error.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file is not a `.npy` of the kind this reader supports.
    #[error("{path}: not a supported .npy file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An output could not be written (the error names it).
    #[error(transparent)]
    Output(#[from] crate::fsio::OutputError),
}

/// Encode an `f32` array of any dimension as `.npy` bytes (C order).
pub fn to_bytes_f32<S, D>(array: &ArrayBase<S, D>) -> Vec<u8>
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    let shape = array.shape();
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + array.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in array.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Write an `f32` array of any dimension as `.npy`, atomically.
pub fn write_f32<S, D>(path: &Path, array: &ArrayBase<S, D>) -> Result<(), NpyError>
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    Ok(crate::fsio::write_atomic(path, &to_bytes_f32(array))?)
}

/// Read a little-endian `float32` or `float64` C-order `.npy` file as `f32`.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>, NpyError> {
    let fmt = |reason: &str| NpyError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|cause| NpyError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fmt("missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(fmt("unsupported format version")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| fmt("header longer than the file"))?;
    let header = std::str::from_utf8(header).map_err(|_| fmt("header is not UTF-8"))?;
    let width = if header.contains("'<f4'") {
        4
    } else if header.contains("'<f8'") {
        8
    } else {
        return Err(fmt("dtype must be '<f4' or '<f8'"));
    };
    if header.contains("'fortran_order': True") {
        return Err(fmt("Fortran order is not supported"));
    }
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fmt("no shape in header"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| fmt("unparsable shape"))?;
    let count: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    if data.len() != count * width {
        return Err(fmt(&format!(
            "expected {} data bytes for shape {shape:?}, found {}",
            count * width,
            data.len()
        )));
    }
    let values: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| fmt(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("npy-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.npy");
        let a = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |ix| {
            (ix[0] * 12 + ix[1] * 4 + ix[2]) as f32
        });
        write_f32(&path, &a).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(
            (bytes.len() - a.len() * 4) % 64,
            0,
            "header is 64-byte aligned"
        );
        let b = read_f32(&path).expect("read back");
        assert_eq!(a, b);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("npy-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.npy");
        std::fs::write(&path, b"hello").expect("write");
        let err = read_f32(&path).expect_err("must fail");
        assert!(err.to_string().contains("bad.npy"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

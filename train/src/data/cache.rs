//! An HDF5 cache of decoded training audio, and background audio for mixing.
//!
//! Decoding a BirdCLEF training set (Ogg Vorbis, resampled to 32 kHz) takes minutes; training
//! reads random crops from the first and last N seconds of every recording many times over. So
//! [`Cache::build_or_open`] decodes each recording once (in parallel), keeps those two segments as
//! float32 in one HDF5 file, and later runs open that file without decoding anything.
//!
//! # File layout (format version 1)
//!
//! One file per key, `<dir>/audio-<first 16 hex digits of the key>.h5`. Rows are the distinct
//! audio files of the dataset sorted by their `filename` (relative to `train_audio/`):
//!
//! | object | type | content |
//! | --- | --- | --- |
//! | `/files` | `str[n]` (variable-length UTF-8) | the `filename` of each row, sorted |
//! | `/head` | `f32[total]` | the first N s of every row, concatenated (32 kHz mono) |
//! | `/head_offsets` | `u64[n+1]` | row `i` is `head[head_offsets[i]:head_offsets[i+1]]` |
//! | `/tail` | `f32[total]` | the last N s of every row longer than N s, concatenated |
//! | `/tail_offsets` | `u64[n+1]` | as for `head`; a row no longer than N s has an empty tail |
//! | `/errors` | `str[n]` | `""`, or why the row could not be decoded (only with `skip_bad`) |
//!
//! Root attributes: `format_version` (u32), `sample_rate` (u32, 32000), `seconds` (f64, N),
//! `params` (JSON string of every preprocessing parameter), `key` (hex string) and `complete`
//! (u8, 1), written last. The file list is a dataset rather than an attribute because HDF5 1.10
//! keeps attributes in the object header, limited to 64 KiB, and a full competition has tens of
//! thousands of files.
//!
//! The key is the SHA-256 of the `params` JSON followed by one line `filename\tsize\tmtime_ns`
//! per row: changing N, the decoder's version, or any audio file (added, removed, replaced)
//! gives a new key and so a new file. A file is written under a temporary name beside it and renamed
//! once complete; at open, a file that HDF5 cannot read (truncated), that lacks `complete`, whose key,
//! file list or offsets disagree, is removed and rebuilt.
//!
//! Reading it from Python:
//!
//! ```python
//! import h5py
//! with h5py.File("cache/audio-0123456789abcdef.h5", "r") as f:
//!     assert f.attrs["complete"] == 1 and f.attrs["format_version"] == 1
//!     files = list(f["files"].asstr()[:])
//!     i = files.index("asbfly/XC134896.ogg")
//!     o = f["head_offsets"]
//!     head = f["head"][o[i]:o[i + 1]]          # float32, 32 kHz
//!     t = f["tail_offsets"]
//!     tail = f["tail"][t[i]:t[i + 1]]          # empty when the recording is <= N s
//! ```

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use birdclef_models::audio::{self, TARGET_SAMPLE_RATE};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::h5;
use super::metadata::DataError;
use super::{AudioStore, Dataset, Segments};

/// Version of the file layout described in the module documentation.
pub const FORMAT_VERSION: u32 = 1;

/// Options of [`Cache::build_or_open`].
#[derive(Debug, Clone, PartialEq)]
pub struct CacheOptions {
    /// Seconds kept at the start and at the end of every recording.
    pub seconds: f64,
    /// Decoding threads (0: one per core).
    pub threads: usize,
    /// Record recordings that fail to decode as skipped instead of failing the build.
    pub skip_bad: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            seconds: 30.0,
            threads: 0,
            skip_bad: false,
        }
    }
}

/// The decoded audio of a [`Dataset`], read on demand from its HDF5 cache file.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    key: String,
    head: hdf5::Dataset,
    tail: hdf5::Dataset,
    head_offsets: Vec<u64>,
    tail_offsets: Vec<u64>,
    /// Cache row of each dataset recording.
    rows: Vec<usize>,
    /// Per cache row: "" or why it was skipped.
    errors: Vec<String>,
    decoded: usize,
    // Keeps the file open for the datasets' lifetime.
    _file: hdf5::File,
}

/// One distinct audio file of the dataset, as the key sees it.
struct Entry {
    filename: String,
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
}

fn h5err(path: &Path) -> impl Fn(hdf5::Error) -> DataError + '_ {
    move |e| DataError::Hdf5 {
        path: path.to_path_buf(),
        cause: e.to_string(),
    }
}

impl Cache {
    /// Open the cache of `dataset` under `dir` (created if needed), or build it by decoding every
    /// recording in parallel (a progress line goes to stderr).
    ///
    /// A recording that cannot be decoded fails the build with [`DataError::Decode`] listing every
    /// such file, unless `opts.skip_bad`: then it is stored as skipped, reported by
    /// [`Cache::skipped`], and [`AudioStore::segments`] returns an error for it.
    pub fn build_or_open(
        dataset: &Dataset,
        dir: &Path,
        opts: &CacheOptions,
    ) -> Result<Cache, DataError> {
        if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
            return Err(DataError::Invalid {
                root: dir.to_path_buf(),
                problems: vec![format!(
                    "cache segment length must be a positive number of seconds, not {}",
                    opts.seconds
                )],
            });
        }
        let entries = entries(dataset)?;
        let params = params_json(opts.seconds);
        let key = cache_key(&params, &entries);
        std::fs::create_dir_all(dir).map_err(|cause| DataError::Io {
            path: dir.to_path_buf(),
            cause,
        })?;
        let path = dir.join(format!("audio-{}.h5", &key[..16]));
        let rows = rows_of(dataset, &entries);
        if path.exists() {
            match Self::open(&path, &key, &entries, rows.clone()) {
                Ok(cache) => return cache.check_skipped(opts.skip_bad),
                Err(why) => {
                    eprintln!(
                        "cache: {} is incomplete or corrupt ({why}); rebuilding it",
                        path.display()
                    );
                    std::fs::remove_file(&path).map_err(|cause| DataError::Io {
                        path: path.clone(),
                        cause,
                    })?;
                }
            }
        }
        // The error names the file (once).
        let tmp = birdclef_models::fsio::AtomicFile::new(&path)?;
        let built = build(tmp.path(), &params, &key, &entries, opts);
        match built {
            Ok(decoded) => {
                tmp.commit()?;
                let mut cache =
                    Self::open(&path, &key, &entries, rows).map_err(|why| DataError::Hdf5 {
                        path: path.clone(),
                        cause: format!("the cache just written does not read back: {why}"),
                    })?;
                cache.decoded = decoded;
                Ok(cache)
            }
            Err(e) => {
                drop(tmp);
                Err(e)
            }
        }
    }

    /// Open and validate an existing file; `Err` says why it cannot be used.
    fn open(path: &Path, key: &str, entries: &[Entry], rows: Vec<usize>) -> Result<Cache, String> {
        let file = hdf5::File::open(path).map_err(|e| e.to_string())?;
        let complete = h5::read_attr::<u8>(&file, "complete")
            .map_err(|_| "no `complete` attribute: the build did not finish".to_string())?;
        if complete != 1 {
            return Err("`complete` is not 1".into());
        }
        let version = h5::read_attr::<u32>(&file, "format_version")
            .map_err(|e| format!("attribute `format_version`: {e}"))?;
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this program writes {FORMAT_VERSION}"
            ));
        }
        let stored_key =
            h5::read_str_attr(&file, "key").map_err(|e| format!("attribute `key`: {e}"))?;
        if stored_key != key {
            return Err("its key does not match its parameters and files".into());
        }
        let read_strings = |name: &str| {
            h5::read_strings(&file, name).map_err(|e| format!("dataset `{name}`: {e}"))
        };
        let files = read_strings("files")?;
        if files.len() != entries.len() || files.iter().zip(entries).any(|(f, e)| *f != e.filename)
        {
            return Err("its file list differs from the dataset's".into());
        }
        let errors = read_strings("errors")?;
        let read_u64 = |name: &str| {
            h5::read_1d::<u64>(&file, name).map_err(|e| format!("dataset `{name}`: {e}"))
        };
        let head_offsets = read_u64("head_offsets")?;
        let tail_offsets = read_u64("tail_offsets")?;
        let head = file.dataset("head").map_err(|e| format!("`head`: {e}"))?;
        let tail = file.dataset("tail").map_err(|e| format!("`tail`: {e}"))?;
        for (name, offsets, data) in [
            ("head", &head_offsets, &head),
            ("tail", &tail_offsets, &tail),
        ] {
            let n = data.shape().first().copied().unwrap_or(0) as u64;
            if offsets.len() != entries.len() + 1
                || offsets.first() != Some(&0)
                || offsets.windows(2).any(|w| w[0] > w[1])
                || offsets.last() != Some(&n)
            {
                return Err(format!("`{name}_offsets` do not match `{name}`"));
            }
            // Touch the last sample: a file cut short fails here if not at open.
            if n > 0 {
                let last = n as usize;
                data.read_slice_1d::<f32, _>(last - 1..last)
                    .map_err(|e| format!("`{name}` cannot be read: {e}"))?;
            }
        }
        if errors.len() != entries.len() {
            return Err("`errors` has the wrong length".into());
        }
        Ok(Cache {
            path: path.to_path_buf(),
            key: key.to_string(),
            head,
            tail,
            head_offsets,
            tail_offsets,
            rows,
            errors,
            decoded: 0,
            _file: file,
        })
    }

    fn check_skipped(self, skip_bad: bool) -> Result<Cache, DataError> {
        let failures: Vec<String> = self
            .errors
            .iter()
            .filter(|e| !e.is_empty())
            .cloned()
            .collect();
        if !skip_bad && !failures.is_empty() {
            return Err(DataError::Decode { failures });
        }
        Ok(self)
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SHA-256 key (hex) of the parameters and files.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many files this call decoded (0 when an existing cache was opened).
    pub fn decoded(&self) -> usize {
        self.decoded
    }

    /// Dataset indices of the recordings that could not be decoded, with the reason (only with
    /// `skip_bad`; the caller should drop them from training and warn).
    pub fn skipped(&self) -> Vec<(usize, String)> {
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(i, &row)| {
                let e = &self.errors[row];
                (!e.is_empty()).then(|| (i, e.clone()))
            })
            .collect()
    }
}

impl AudioStore for Cache {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn segments(&self, index: usize) -> Result<Segments, DataError> {
        let row = self.row(index)?;
        let read = |data: &hdf5::Dataset, offsets: &[u64]| -> Result<Vec<f32>, DataError> {
            let (a, b) = (offsets[row] as usize, offsets[row + 1] as usize);
            if a == b {
                return Ok(Vec::new());
            }
            Ok(data
                .read_slice_1d::<f32, _>(a..b)
                .map_err(self.read_err(row))?
                .to_vec())
        };
        Ok(Segments {
            head: read(&self.head, &self.head_offsets)?,
            tail: read(&self.tail, &self.tail_offsets)?,
        })
    }

    fn head_len(&self, index: usize) -> Result<usize, DataError> {
        let row = self.row(index)?;
        Ok((self.head_offsets[row + 1] - self.head_offsets[row]) as usize)
    }

    fn head_range(&self, index: usize, start: usize, len: usize) -> Result<Vec<f32>, DataError> {
        let row = self.row(index)?;
        let (a, b) = (
            self.head_offsets[row] as usize,
            self.head_offsets[row + 1] as usize,
        );
        let mut out = vec![0.0f32; len];
        let from = a + start;
        let to = (from + len).min(b);
        if from < to {
            let got = self
                .head
                .read_slice_1d::<f32, _>(from..to)
                .map_err(self.read_err(row))?;
            for (o, v) in out.iter_mut().zip(got.iter()) {
                *o = *v;
            }
        }
        Ok(out)
    }
}

impl Cache {
    /// The cache row of recording `index`, unless it is out of range or was skipped.
    fn row(&self, index: usize) -> Result<usize, DataError> {
        let &row = self.rows.get(index).ok_or(DataError::NoRecording {
            store: "cache",
            index,
            len: self.rows.len(),
        })?;
        if !self.errors[row].is_empty() {
            return Err(DataError::Skipped {
                index,
                reason: self.errors[row].clone(),
            });
        }
        Ok(row)
    }

    fn read_err(&self, row: usize) -> impl FnOnce(hdf5::Error) -> DataError + '_ {
        move |cause| DataError::ReadRow {
            path: self.path.clone(),
            row,
            cause,
        }
    }
}

/// The first and last `seconds` of decoded samples (tail empty when no longer than `seconds`).
fn cut(samples: &[f32], seconds: f64) -> Segments {
    let n = (seconds * f64::from(TARGET_SAMPLE_RATE)).round() as usize;
    if samples.len() <= n {
        Segments {
            head: samples.to_vec(),
            tail: Vec::new(),
        }
    } else {
        Segments {
            head: samples[..n].to_vec(),
            tail: samples[samples.len() - n..].to_vec(),
        }
    }
}

fn params_json(seconds: f64) -> String {
    serde_json::json!({
        "format_version": FORMAT_VERSION,
        "sample_rate": TARGET_SAMPLE_RATE,
        "seconds": seconds,
        "channels": "mean to mono",
        "decoder": format!("birdclef {} models::audio::decode_file", env!("CARGO_PKG_VERSION")),
    })
    .to_string()
}

fn cache_key(params: &str, entries: &[Entry]) -> String {
    let mut h = Sha256::new();
    h.update(params.as_bytes());
    h.update(b"\n");
    for e in entries {
        h.update(format!("{}\t{}\t{}\n", e.filename, e.size, e.mtime_ns).as_bytes());
    }
    crate::hex(&h.finalize())
}

/// Distinct files of the dataset sorted by filename, with their size and modification time.
fn entries(dataset: &Dataset) -> Result<Vec<Entry>, DataError> {
    let mut by_name: HashMap<&str, &Path> = HashMap::new();
    for r in &dataset.recordings {
        by_name.entry(r.filename.as_str()).or_insert(&r.path);
    }
    let mut names: Vec<&str> = by_name.keys().copied().collect();
    names.sort_unstable();
    names
        .into_iter()
        .map(|name| {
            let path = by_name[name].to_path_buf();
            let meta = std::fs::metadata(&path).map_err(|cause| DataError::Io {
                path: path.clone(),
                cause,
            })?;
            Ok(Entry {
                filename: name.to_string(),
                path,
                size: meta.len(),
                mtime_ns: crate::modified_ns(&meta),
            })
        })
        .collect()
}

fn rows_of(dataset: &Dataset, entries: &[Entry]) -> Vec<usize> {
    let row: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.filename.as_str(), i))
        .collect();
    dataset
        .recordings
        .iter()
        .map(|r| row[r.filename.as_str()])
        .collect()
}

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, DataError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| DataError::Io {
            path: PathBuf::from("<thread pool>"),
            cause: std::io::Error::other(e.to_string()),
        })
}

/// Decode every entry into a new file at `tmp`; returns the number of files decoded.
fn build(
    tmp: &Path,
    params: &str,
    key: &str,
    entries: &[Entry],
    opts: &CacheOptions,
) -> Result<usize, DataError> {
    let err = h5err(tmp);
    let pool = thread_pool(opts.threads)?;
    let file = hdf5::File::create(tmp).map_err(&err)?;
    const CHUNK: usize = 1 << 16;
    let head = file
        .new_dataset::<f32>()
        .chunk(CHUNK)
        .shape(0..)
        .create("head")
        .map_err(&err)?;
    let tail = file
        .new_dataset::<f32>()
        .chunk(CHUNK)
        .shape(0..)
        .create("tail")
        .map_err(&err)?;
    let mut head_offsets = vec![0u64];
    let mut tail_offsets = vec![0u64];
    let mut errors = vec![String::new(); entries.len()];
    let mut failures = Vec::new();
    let start = Instant::now();
    let batch = pool.current_num_threads().max(1) * 4;
    let mut done = 0usize;
    let mut last_report = f64::NEG_INFINITY;
    let append = |data: &hdf5::Dataset, offsets: &mut Vec<u64>, samples: &[f32]| {
        let a = *offsets.last().unwrap_or(&0) as usize;
        let b = a + samples.len();
        if b > a {
            data.resize(b)?;
            data.write_slice(samples, a..b)?;
        }
        offsets.push(b as u64);
        Ok::<(), hdf5::Error>(())
    };
    for (chunk_index, chunk) in entries.chunks(batch).enumerate() {
        let decoded: Vec<Result<Segments, String>> = pool.install(|| {
            chunk
                .par_iter()
                .map(|e| {
                    audio::decode_file(&e.path)
                        .map(|d| cut(&d.samples, opts.seconds))
                        .map_err(|err| err.to_string())
                })
                .collect()
        });
        for (j, result) in decoded.into_iter().enumerate() {
            let row = chunk_index * batch + j;
            let seg = match result {
                Ok(s) => s,
                Err(why) => {
                    errors[row] = why.clone();
                    failures.push(why);
                    Segments::default()
                }
            };
            append(&head, &mut head_offsets, &seg.head).map_err(&err)?;
            append(&tail, &mut tail_offsets, &seg.tail).map_err(&err)?;
        }
        done += chunk.len();
        let secs = start.elapsed().as_secs_f64();
        if done < entries.len() && secs - last_report < 0.5 {
            continue;
        }
        last_report = secs;
        eprint!(
            "\rcache: decoded {done}/{} files in {secs:.1} s ({:.1} files/s)",
            entries.len(),
            done as f64 / secs.max(1e-9)
        );
        let _ = std::io::stderr().flush();
    }
    if !entries.is_empty() {
        eprintln!();
    }
    if !failures.is_empty() && !opts.skip_bad {
        return Err(DataError::Decode { failures });
    }
    if !failures.is_empty() {
        eprintln!(
            "cache: {} recording(s) could not be decoded and are skipped",
            failures.len()
        );
    }
    let names: Vec<String> = entries.iter().map(|e| e.filename.clone()).collect();
    h5::write_strings(&file, "files", &names).map_err(&err)?;
    h5::write_strings(&file, "errors", &errors).map_err(&err)?;
    h5::write_1d(&file, "head_offsets", &head_offsets).map_err(&err)?;
    h5::write_1d(&file, "tail_offsets", &tail_offsets).map_err(&err)?;
    h5::write_attr(&file, "format_version", &FORMAT_VERSION).map_err(&err)?;
    h5::write_attr(&file, "sample_rate", &TARGET_SAMPLE_RATE).map_err(&err)?;
    h5::write_attr(&file, "seconds", &opts.seconds).map_err(&err)?;
    h5::write_str_attr(&file, "params", params).map_err(&err)?;
    h5::write_str_attr(&file, "key", key).map_err(&err)?;
    file.flush().map_err(&err)?;
    h5::write_attr(&file, "complete", &1u8).map_err(&err)?;
    drop(head);
    drop(tail);
    file.close().map_err(&err)?;
    Ok(entries.len())
}

/// Up to `max_files` recordings of `<root>/unlabeled_soundscapes/` (sorted by name), each decoded
/// to 32 kHz mono and cut to its first `seconds`, for mixing into training crops as background.
/// Files that fail to decode are all listed in one [`DataError::Decode`].
pub fn load_backgrounds(
    root: &Path,
    seconds: f64,
    max_files: usize,
) -> Result<Vec<Vec<f32>>, DataError> {
    let dir = root.join("unlabeled_soundscapes");
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(DataError::Invalid {
            root: dir,
            problems: vec![format!(
                "background clips must be a positive number of seconds long, not {seconds}"
            )],
        });
    }
    let read = std::fs::read_dir(&dir).map_err(|cause| DataError::Io {
        path: dir.clone(),
        cause,
    })?;
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.truncate(max_files);
    let keep = (seconds.max(0.0) * f64::from(TARGET_SAMPLE_RATE)).round() as usize;
    let results: Vec<Result<Vec<f32>, String>> = files
        .par_iter()
        .map(|p| {
            let mut stream = audio::AudioStream::open(p).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while out.len() < keep && stream.read_into(&mut out).map_err(|e| e.to_string())? {}
            out.truncate(keep);
            if out.is_empty() {
                return Err(format!("{}: contains no audio samples", p.display()));
            }
            Ok(out)
        })
        .collect();
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(v) => out.push(v),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        return Err(DataError::Decode { failures });
    }
    Ok(out)
}

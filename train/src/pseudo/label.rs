//! Labelling soundscapes with a teacher ensemble (see the [module documentation](super)).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use birdclef_export::export::checkpoints_in_run;
use birdclef_infer::model::{check_cards, OnnxModel};
use birdclef_infer::predict::{discover, stem_of};
use birdclef_infer::shard::{self, Shard, ShardEnv, ShardSpec};
use birdclef_models::audio::{self, TARGET_SAMPLE_RATE};
use birdclef_models::card::Card;
use birdclef_models::checkpoint::{self, NamedTensor};
use birdclef_models::frontend::{Frontend, FrontendConfig};
use birdclef_models::fsio;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tch::Device;

use super::table::{Table, FORMAT_VERSION};
use crate::error::TrainError;
use crate::model::net::{self, Net};

/// Testing aid: with this environment variable set to `N`, the process exits (status 137, as if
/// killed) right after the `N`-th soundscape's part is written, so tests can check resuming.
pub const ABORT_ENV: &str = "BIRDCLEF_PSEUDO_ABORT_AFTER";

/// A loaded teacher.
pub enum Teacher {
    /// A checkpoint directory, run with libtorch.
    Torch {
        /// The directory.
        path: PathBuf,
        /// Its card.
        card: Card,
        /// The network.
        net: Net,
    },
    /// An ONNX file written by birdclef-export, run with ONNX Runtime.
    Onnx(OnnxModel),
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Teacher({})", self.path().display())
    }
}

impl Teacher {
    /// Load a teacher: a directory is a checkpoint (card.json + weights.safetensors), a file an
    /// ONNX model. ONNX Runtime must have been initialised for ONNX files
    /// ([`birdclef_infer::ort_env::init`]).
    pub fn load(path: &Path, device: Device, ort_threads: usize) -> Result<Self, TrainError> {
        if path.is_dir() {
            let teacher = |cause: TrainError| TrainError::Teacher {
                path: path.to_path_buf(),
                cause: Box::new(cause),
            };
            // from_checkpoint checks the card against the weights; the card itself is small.
            let net = Net::from_checkpoint(path, device).map_err(|e| teacher(e.into()))?;
            let card =
                Card::load(&path.join(checkpoint::CARD_FILE)).map_err(|e| teacher(e.into()))?;
            Ok(Teacher::Torch {
                path: path.to_path_buf(),
                card,
                net,
            })
        } else {
            Ok(Teacher::Onnx(
                OnnxModel::load(path, birdclef_infer::engine::Engine::Ort, ort_threads)
                    .map_err(Box::new)?,
            ))
        }
    }

    /// Where it came from.
    pub fn path(&self) -> &Path {
        match self {
            Teacher::Torch { path, .. } => path,
            Teacher::Onnx(m) => &m.path,
        }
    }

    /// Its model card.
    pub fn card(&self) -> &Card {
        match self {
            Teacher::Torch { card, .. } => card,
            Teacher::Onnx(m) => &m.card,
        }
    }

    /// Logits of `n` windows (`x` row-major in the card's input shape): `n × classes`.
    pub fn logits(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>, TrainError> {
        match self {
            Teacher::Torch { path, card, net } => {
                let [c, h, w] = card.input_shape;
                let teacher = |cause: TrainError| TrainError::Teacher {
                    path: path.clone(),
                    cause: Box::new(cause),
                };
                let t = net::tensor_from(x, &[n, c, h, w], net.device()).map_err(|e| {
                    teacher(TrainError::torch("moving the windows to the device")(e))
                })?;
                let y = tch::no_grad(|| net.f_forward(&t, false)).map_err(|e| teacher(e.into()))?;
                net::to_vec_f32(&y).map_err(|e| teacher(TrainError::torch("reading the logits")(e)))
            }
            Teacher::Onnx(m) => Ok(m.run(x, n).map_err(Box::new)?),
        }
    }

    /// The files whose content identifies this teacher (for the resume key).
    fn identity_files(&self) -> Vec<PathBuf> {
        match self {
            Teacher::Torch { path, .. } => vec![
                path.join(checkpoint::CARD_FILE),
                path.join(checkpoint::WEIGHTS_FILE),
            ],
            Teacher::Onnx(m) => vec![m.path.clone()],
        }
    }
}

/// Expand teacher arguments: a checkpoint directory or ONNX file stands for itself; a training
/// run directory for the checkpoints `birdclef-export --run` takes from it (`fold<N>/best/`);
/// a directory of ONNX files for those files (sorted).
pub fn expand_teachers(args: &[PathBuf]) -> Result<Vec<PathBuf>, TrainError> {
    let mut out = Vec::new();
    for a in args {
        if a.is_file() || a.join(checkpoint::CARD_FILE).is_file() {
            out.push(a.clone());
            continue;
        }
        if !a.is_dir() {
            return Err(TrainError::TeacherPath {
                path: a.clone(),
                reason: "no such file or directory",
            });
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(a)
            .map_err(|cause| TrainError::TeacherDir {
                path: a.clone(),
                cause,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        // A run directory: the checkpoints `birdclef-export --run` would export.
        let folds = checkpoints_in_run(a).unwrap_or_default();
        let onnx: Vec<PathBuf> = entries
            .iter()
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "onnx"))
            .cloned()
            .collect();
        if folds.is_empty() && onnx.is_empty() {
            return Err(TrainError::TeacherPath {
                path: a.clone(),
                reason: "neither a checkpoint (card.json), a run directory with fold<N>/best/, \
                         nor a directory of .onnx files",
            });
        }
        out.extend(folds);
        out.extend(onnx);
    }
    if out.is_empty() {
        return Err(TrainError::NoTeachers);
    }
    Ok(out)
}

/// Check that teachers can be ensembled (same labels, same windows; as birdclef-infer checks its
/// models); the error names both.
pub fn check_teachers(teachers: &[Teacher]) -> Result<(), TrainError> {
    let cards: Vec<(&Path, &Card)> = teachers.iter().map(|t| (t.path(), t.card())).collect();
    Ok(check_cards(&cards).map_err(Box::new)?)
}

/// Options of [`pseudo_label`].
#[derive(Debug, Clone)]
pub struct PseudoLabelOptions {
    /// Teachers (see [`expand_teachers`]).
    pub teachers: Vec<PathBuf>,
    /// Soundscape files or directories (a directory contributes its audio files).
    pub soundscapes: Vec<PathBuf>,
    /// The HDF5 file to write.
    pub out: PathBuf,
    /// Label one shard of the files only.
    pub shard: Option<ShardSpec>,
    /// Windows per forward pass (at least 1).
    pub batch_size: usize,
    /// Device of checkpoint teachers.
    pub device: Device,
    /// Decoding threads (0: one per core).
    pub threads: usize,
    /// ONNX Runtime library for ONNX teachers (else found as birdclef-infer finds it).
    pub ort_lib: Option<PathBuf>,
}

/// What [`pseudo_label`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoSummary {
    /// The file written.
    pub out: PathBuf,
    /// The shard labelled.
    pub shard: Shard,
    /// Soundscapes in this shard.
    pub files: usize,
    /// Of those, taken from the parts of an earlier, interrupted run.
    pub resumed: usize,
    /// Windows written.
    pub windows: usize,
    /// Soundscapes that could not be read, with the reason, which names the file (they have no
    /// rows).
    pub failed: Vec<(PathBuf, String)>,
    /// Seconds of audio labelled by this call.
    pub audio_seconds: f64,
    /// Wall time.
    pub seconds: f64,
}

/// One soundscape's result.
struct Part {
    file: String,
    probs: Vec<f32>,
    windows: usize,
}

fn file_identity(path: &Path) -> Result<String, TrainError> {
    let meta = std::fs::metadata(path).map_err(TrainError::io("reading the metadata of", path))?;
    Ok(format!(
        "{}\t{}\t{}",
        path.display(),
        meta.len(),
        crate::modified_ns(&meta)
    ))
}

fn resume_key(teachers: &[Teacher], files: &[PathBuf]) -> Result<String, TrainError> {
    let mut h = Sha256::new();
    h.update(format!("birdclef pseudo-label v{FORMAT_VERSION}\n"));
    for t in teachers {
        for f in t.identity_files() {
            h.update(file_identity(&f)?);
            h.update(b"\n");
        }
    }
    h.update(b"--\n");
    for f in files {
        h.update(file_identity(f)?);
        h.update(b"\n");
    }
    Ok(crate::hex(&h.finalize()))
}

/// `<out>.parts`, beside the output file.
pub fn parts_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    out.with_file_name(name)
}

fn part_path(dir: &Path, file: &Path) -> PathBuf {
    dir.join(format!("{}.safetensors", stem_of(file)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A finished soundscape's part, if it is there and whole.
fn read_part(path: &Path, file: &Path, k: usize) -> Option<Part> {
    let tensors = checkpoint::read_tensors(path).ok()?;
    let probs = tensors.into_iter().find(|t| t.name == "probs")?;
    let windows = *probs.shape.first()?;
    (probs.shape == [windows, k]).then(|| Part {
        file: file_name(file),
        probs: probs.data,
        windows,
    })
}

/// What the decoding workers send: consecutive windows of a soundscape, then its end.
enum Piece {
    /// `windows` consecutive windows of soundscape `index`: the model inputs for each distinct
    /// frontend, `[windows, c, m, f]` flattened.
    Windows {
        index: usize,
        inputs: Vec<Vec<f32>>,
        windows: usize,
    },
    /// Soundscape `index` is complete (seconds of audio), or could not be read (why).
    End {
        index: usize,
        result: Result<f64, String>,
    },
}

/// Run the teacher ensemble over the soundscapes and write the HDF5 file (see the module docs).
///
/// The output file (and its parts directory) are checked before any work: the file's directory
/// must exist, and the file must not be a directory, a teacher or a soundscape.
pub fn pseudo_label(opts: &PseudoLabelOptions) -> Result<PseudoSummary, TrainError> {
    let t0 = Instant::now();
    if opts.batch_size == 0 {
        return Err(TrainError::BadOption {
            option: "--batch-size",
            message: "--batch-size must be at least 1".into(),
        });
    }
    let out = &opts.out;
    fsio::check_output_file(out)?;
    fsio::check_output_dir(&parts_dir(out))?;
    fsio::refuse_overwriting(out, opts.soundscapes.iter().map(PathBuf::as_path))?;
    let teacher_paths = expand_teachers(&opts.teachers)?;
    let teacher_files: Vec<PathBuf> = teacher_paths
        .iter()
        .flat_map(|p| {
            [
                p.clone(),
                p.join(checkpoint::CARD_FILE),
                p.join(checkpoint::WEIGHTS_FILE),
            ]
        })
        .collect();
    fsio::refuse_overwriting(out, teacher_files.iter().map(PathBuf::as_path))?;
    if teacher_paths.iter().any(|p| p.is_file()) {
        birdclef_infer::ort_env::init(opts.ort_lib.as_deref()).map_err(Box::new)?;
    }
    let mut teachers: Vec<Teacher> = teacher_paths
        .iter()
        .map(|p| Teacher::load(p, opts.device, 1))
        .collect::<Result<_, TrainError>>()?;
    check_teachers(&teachers)?;
    let card = teachers[0].card().clone();
    let k = card.labels.len();
    // Distinct frontends, and which one each teacher uses.
    let mut frontends: Vec<FrontendConfig> = Vec::new();
    let mut uses = Vec::new();
    for t in &teachers {
        let f = &t.card().frontend;
        let i = frontends.iter().position(|g| g == f).unwrap_or_else(|| {
            frontends.push(f.clone());
            frontends.len() - 1
        });
        uses.push(i);
    }
    let frontends: Vec<Frontend> = frontends
        .into_iter()
        .map(|f| {
            Frontend::new(f).map_err(|cause| TrainError::Frontend {
                what: "teacher frontend",
                cause,
            })
        })
        .collect::<Result<_, TrainError>>()?;

    // Entries that cannot be read (dangling links, unlistable folders) are failed soundscapes
    // of the first shard (they belong to no shard's files).
    let birdclef_infer::predict::Discovered {
        files: all,
        unreadable,
    } = discover(&opts.soundscapes).map_err(Box::new)?;
    if all.is_empty() {
        eprintln!(
            "warning: no audio files ({}) in {}; the file will have no rows",
            birdclef_infer::predict::AUDIO_EXTENSIONS.join(", "),
            opts.soundscapes
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let shard = match &opts.shard {
        Some(spec) => spec.resolve(&ShardEnv::from_process_env())?,
        None => Shard::new(0, 1)?,
    };
    fsio::refuse_overwriting(out, all.iter().map(PathBuf::as_path))?;
    let files = shard::select(&all, shard);
    let key = resume_key(&teachers, &files)?;
    let parts = parts_dir(&opts.out);
    let key_file = parts.join("key");
    let same_key = std::fs::read_to_string(&key_file).is_ok_and(|s| s.trim() == key);
    if parts.exists() && !same_key {
        eprintln!(
            "pseudo-label: {} holds parts of a run with other teachers or files; starting afresh",
            parts.display()
        );
        std::fs::remove_dir_all(&parts).map_err(TrainError::io("removing", &parts))?;
    }
    std::fs::create_dir_all(&parts).map_err(TrainError::io("creating", &parts))?;
    birdclef_models::fsio::write_atomic(&key_file, key.as_bytes())?;

    let mut done: BTreeMap<usize, Part> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        if let Some(p) = read_part(&part_path(&parts, f), f, k) {
            done.insert(i, p);
        }
    }
    let resumed = done.len();
    if resumed > 0 {
        eprintln!(
            "pseudo-label: resuming: {resumed} of {} soundscapes already labelled in {}",
            files.len(),
            parts.display()
        );
    }
    let todo: Vec<usize> = (0..files.len()).filter(|i| !done.contains_key(i)).collect();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|cause| TrainError::ThreadPool {
            what: "decoding",
            cause,
        })?;
    // discover's reasons do not name the entry; a failure's reason is printed and stored alone,
    // so it must.
    let mut failed: Vec<(PathBuf, String)> = if shard.k == 0 {
        unreadable
            .into_iter()
            .map(|(path, why)| {
                let why = format!("{}: {why}", path.display());
                (path, why)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut audio_seconds = 0.0;
    let batch = opts.batch_size;
    let start = Instant::now();
    let mut labelled = 0usize;
    let mut last_report = f64::NEG_INFINITY;
    let abort_after: Option<usize> = std::env::var(ABORT_ENV).ok().and_then(|v| v.parse().ok());
    std::thread::scope(|s| -> Result<(), TrainError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(threads * 2);
        let (files, frontends, todo, pool) = (&files, &frontends, &todo, &pool);
        // Each decoding worker streams one soundscape at a time, `batch` windows per piece; the
        // bounded channel keeps memory flat whatever the files' lengths.
        s.spawn(move || {
            pool.install(|| {
                todo.par_iter().for_each_with(tx, |tx, &index| {
                    stream_windows(&files[index], index, frontends, batch, &mut |p| {
                        tx.send(p).is_ok()
                    });
                });
            });
        });
        let mut partial: HashMap<usize, Vec<f32>> = HashMap::new();
        for piece in rx {
            let (index, seconds) = match piece {
                Piece::Windows {
                    index,
                    inputs,
                    windows,
                } => {
                    let probs = ensemble(&mut teachers, &uses, &inputs, windows, k)?;
                    partial.entry(index).or_default().extend(probs);
                    continue;
                }
                Piece::End { index, result } => {
                    let file = &files[index];
                    match result {
                        Ok(seconds) => (index, seconds),
                        Err(why) => {
                            // `why` names the file.
                            partial.remove(&index);
                            eprintln!("\npseudo-label: {why}; no rows");
                            failed.push((file.clone(), why));
                            continue;
                        }
                    }
                }
            };
            let file = &files[index];
            let probs = partial.remove(&index).unwrap_or_default();
            let windows = probs.len() / k.max(1);
            checkpoint::write_tensors(
                &part_path(&parts, file),
                &[NamedTensor {
                    name: "probs".into(),
                    shape: vec![windows, k],
                    data: probs.clone(),
                }],
                None,
            )?;
            done.insert(
                index,
                Part {
                    file: file_name(file),
                    probs,
                    windows,
                },
            );
            audio_seconds += seconds;
            labelled += 1;
            if abort_after == Some(labelled) {
                eprintln!("\npseudo-label: {ABORT_ENV}={labelled}: stopping as if killed");
                std::process::exit(137);
            }
            let secs = start.elapsed().as_secs_f64();
            if labelled < todo.len() && secs - last_report < 0.5 {
                continue;
            }
            last_report = secs;
            eprint!(
                "\rpseudo-label: {}/{} soundscapes ({:.0} s of audio, {:.1}x real time)",
                labelled,
                todo.len(),
                audio_seconds,
                audio_seconds / secs.max(1e-9)
            );
            let _ = std::io::stderr().flush();
        }
        Ok(())
    })?;
    if labelled > 0 {
        eprintln!();
    }
    let fcfg = &card.frontend;
    let mut table = Table {
        labels: card.labels.clone(),
        teachers: teacher_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        teacher_names: teachers.iter().map(|t| t.card().name.clone()).collect(),
        sample_rate: fcfg.sample_rate,
        window_seconds: fcfg.windows.window_seconds,
        shard: shard.to_string(),
        ..Table::default()
    };
    for (i, part) in &done {
        let stem = stem_of(&files[*i]);
        for w in 0..part.windows {
            let end = fcfg.window_end_seconds(w);
            table.row_id.push(format!("{stem}_{}", end.round() as u64));
            table.soundscape.push(part.file.clone());
            table.start.push(end - fcfg.windows.window_seconds);
            table.end.push(end);
        }
        table.probs.extend_from_slice(&part.probs);
    }
    table.failed = failed.iter().map(|(_, why)| why.clone()).collect();
    table.write(&opts.out)?;
    std::fs::remove_dir_all(&parts).map_err(TrainError::io("removing", &parts))?;
    Ok(PseudoSummary {
        out: opts.out.clone(),
        shard,
        files: files.len(),
        resumed,
        windows: table.row_id.len(),
        failed,
        audio_seconds,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The ensemble's probabilities for `windows` windows (`inputs` per frontend): the mean over
/// teachers of their probabilities (sigmoid, or softmax where a card says so), `windows × k`.
fn ensemble(
    teachers: &mut [Teacher],
    uses: &[usize],
    inputs: &[Vec<f32>],
    windows: usize,
    k: usize,
) -> Result<Vec<f32>, TrainError> {
    let mut sum = vec![0.0f32; windows * k];
    for (t, &fi) in teachers.iter_mut().zip(uses) {
        let mut probs = t.logits(&inputs[fi], windows)?;
        t.card().output_activation.apply(&mut probs, k);
        for (acc, p) in sum.iter_mut().zip(&probs) {
            *acc += *p;
        }
    }
    let nt = teachers.len() as f32;
    sum.iter_mut().for_each(|v| *v /= nt);
    Ok(sum)
}

/// The first `n` windows of `samples` for every frontend, flattened.
fn window_inputs(frontends: &[Frontend], samples: &[f32], n: usize) -> Vec<Vec<f32>> {
    frontends
        .iter()
        .map(|f| {
            let per: usize = f.config().input_shape().iter().product();
            let mut v = f.compute(samples).into_raw_vec_and_offset().0;
            v.truncate(n * per);
            v
        })
        .collect()
}

/// Decode `path` as a stream and send its windows in pieces of `chunk` windows, then its end.
/// The windows are exactly those of the whole decoded file (each window depends on its own
/// samples only; the last, partial one follows the cards' policy for the file's full length).
/// Stops early when `send` returns false (the receiver is gone). An error names the file.
fn stream_windows(
    path: &Path,
    index: usize,
    frontends: &[Frontend],
    chunk: usize,
    send: &mut dyn FnMut(Piece) -> bool,
) {
    let mut body = || -> Result<f64, String> {
        let mut stream = audio::AudioStream::open(path).map_err(|e| e.to_string())?;
        let cfg = frontends
            .first()
            .ok_or_else(|| format!("{}: no frontend", path.display()))?
            .config()
            .clone();
        let w = cfg.window_samples().max(1);
        // Send `windows` windows cut from `samples` (zero-padded past its end).
        let mut emit = |samples: &[f32], windows: usize| -> Result<(), String> {
            let inputs = window_inputs(frontends, samples, windows);
            if send(Piece::Windows {
                index,
                inputs,
                windows,
            }) {
                Ok(())
            } else {
                Err(format!("{}: stopped", path.display()))
            }
        };
        let mut buf: Vec<f32> = Vec::new();
        let (mut total, mut sent) = (0usize, 0usize);
        loop {
            let before = buf.len();
            let more = stream.read_into(&mut buf).map_err(|e| e.to_string())?;
            total += buf.len() - before;
            while buf.len() >= chunk * w {
                let piece: Vec<f32> = buf.drain(..chunk * w).collect();
                emit(&piece, chunk)?;
                sent += chunk;
            }
            if !more {
                break;
            }
        }
        if total == 0 {
            return Err(format!("{}: contains no audio samples", path.display()));
        }
        let rest = cfg.window_count(total).saturating_sub(sent);
        if rest > 0 {
            emit(&buf, rest)?;
        }
        Ok(total as f64 / f64::from(TARGET_SAMPLE_RATE))
    };
    let result = body();
    send(Piece::End { index, result });
}

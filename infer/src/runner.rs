//! The scoring pipeline: decode and frontend on worker threads, batched ONNX Runtime inference on
//! the calling thread, in bounded memory.
//!
//! Workers (a rayon pool of `decode_threads`) take one file at a time, stream-decode it
//! ([`AudioStream`]), cut 5-s windows as samples arrive and compute each window's features once
//! per distinct frontend among the models. Windows travel through a bounded channel, so however
//! long a file is, only a few batches of features exist at once. The calling thread gathers
//! windows from any files into batches, runs every model on its frontend's features, and stores
//! sigmoid probabilities per file, window and model.
//!
//! A file that cannot be decoded does not stop the run: the windows decoded before the failure
//! keep their predictions; the rest of the file (as long as its header says it is, at least one
//! window) gets the fallback probability [`FALLBACK_PROBABILITY`], and the failure is reported.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use birdclef_models::audio::{AudioError, AudioStream};
use birdclef_models::frontend::{Frontend, FrontendConfig};
use rayon::prelude::*;

use crate::model::OnnxModel;

/// The probability given to every species in windows whose audio could not be decoded.
pub const FALLBACK_PROBABILITY: f32 = 0.0;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Threads decoding audio and computing features.
    pub decode_threads: usize,
    /// Windows per inference batch.
    pub batch_size: usize,
    /// Warn when the projected total time exceeds this.
    pub time_limit: Option<Duration>,
    /// With a time limit: stop starting new files once the projection exceeds it.
    pub strict: bool,
    /// Print a progress line to stderr.
    pub progress: bool,
}

/// Why a file's rows are (partly) fallback values.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// What went wrong, naming the file.
    pub reason: String,
    /// Windows that hold real predictions.
    pub decoded_windows: usize,
}

/// Everything computed for one file.
#[derive(Debug, Clone)]
pub struct FileScores {
    /// The soundscape.
    pub path: PathBuf,
    /// Per window, per model, per class: probabilities (`windows × models × classes`, row-major).
    pub probs: Vec<f32>,
    /// Number of windows (rows in the submission).
    pub windows: usize,
    /// Set when some windows are fallback values.
    pub failure: Option<Failure>,
    /// Seconds of audio decoded.
    pub seconds: f64,
}

/// The result of a run.
#[derive(Debug)]
pub struct RunOutput {
    /// One entry per input file, in input order.
    pub files: Vec<FileScores>,
    /// Models and classes, to index [`FileScores::probs`].
    pub models: usize,
    /// Classes per model.
    pub classes: usize,
    /// Files not started because `--strict` stopped the run (their rows are fallback values).
    pub skipped_for_time: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Windows that went through the models.
    pub windows_inferred: usize,
}

enum Msg {
    Window {
        file: usize,
        index: usize,
        /// One feature vector per distinct frontend.
        features: Vec<Vec<f32>>,
    },
    Done {
        file: usize,
        windows: usize,
        expected: usize,
        seconds: f64,
        error: Option<String>,
    },
}

/// Windows a file of `seconds` (from its header) is expected to have.
fn expected_windows(cfg: &FrontendConfig, seconds: Option<f64>) -> usize {
    seconds
        .map(|s| cfg.window_count((s * f64::from(cfg.sample_rate)).round() as usize))
        .unwrap_or(1)
}

/// Decode one file and send its windows; always ends with a `Done`.
fn process_file(
    file: usize,
    path: &Path,
    frontends: &[Frontend],
    tx: &SyncSender<Msg>,
    stop: &AtomicBool,
) {
    let policy = frontends[0].config().clone();
    let w = policy.window_samples();
    let done = |windows, expected, seconds, error| {
        let _ = tx.send(Msg::Done {
            file,
            windows,
            expected,
            seconds,
            error,
        });
    };
    if stop.load(Ordering::Relaxed) {
        // Not started for lack of time: rows come from the header's duration.
        let expected = AudioStream::open(path)
            .map(|s| expected_windows(&policy, s.source_info().duration_seconds()))
            .unwrap_or(1);
        return done(
            0,
            expected,
            0.0,
            Some("skipped: the time limit was reached".into()),
        );
    }
    let mut stream = match AudioStream::open(path) {
        Ok(s) => s,
        Err(e) => return done(0, 1, 0.0, Some(e.to_string())),
    };
    let expected = expected_windows(&policy, stream.source_info().duration_seconds());
    let mut buf: Vec<f32> = Vec::with_capacity(2 * w);
    let mut index = 0;
    let mut total = 0usize;
    let send_window = |clip: &[f32], index: usize| {
        let features = frontends
            .iter()
            .map(|fe| fe.compute_clip(clip).into_raw_vec_and_offset().0)
            .collect();
        tx.send(Msg::Window {
            file,
            index,
            features,
        })
        .is_ok()
    };
    let mut error: Option<AudioError> = None;
    loop {
        let before = buf.len();
        match stream.read_into(&mut buf) {
            Ok(true) => {
                total += buf.len() - before;
                while buf.len() >= w {
                    if !send_window(&buf[..w], index) {
                        return;
                    }
                    index += 1;
                    buf.drain(..w);
                }
            }
            Ok(false) => break,
            Err(e) => {
                total += buf.len() - before;
                error = Some(e);
                break;
            }
        }
    }
    // The last, partial window, when the window policy keeps it (long enough, or all the file
    // has). A file that decoded nothing gets no window here: its row is a fallback.
    if total > 0 && policy.window_count(total) > index {
        if !send_window(&buf, index) {
            return;
        }
        index += 1;
    }
    let seconds = total as f64 / f64::from(policy.sample_rate);
    // A clean decode's own window count is authoritative; a failed file keeps the rows its
    // header promised, so the submission has them all.
    let rows = match error {
        Some(_) => expected.max(index),
        None => index,
    };
    done(index, rows.max(1), seconds, error.map(|e| e.to_string()));
}

struct Progress {
    start: Instant,
    last: Instant,
    enabled: bool,
}

impl Progress {
    fn tick(&mut self, files_done: usize, files: usize, windows: usize, force: bool) {
        if !self.enabled || (!force && self.last.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let eta = if files_done > 0 {
            secs * (files - files_done) as f64 / files_done as f64
        } else {
            f64::NAN
        };
        eprint!(
            "\r[{:>5}/{files} files] {windows} windows, {:.0} windows/s, elapsed {}, ETA {}   ",
            files_done,
            windows as f64 / secs,
            fmt_secs(secs),
            fmt_secs(eta)
        );
        if force {
            eprintln!();
        }
    }
}

/// `1h02m03s`, `4m05s`, `12s`.
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

/// What the inference workers share.
struct State {
    scores: Vec<FileScores>,
    files_done: usize,
    bytes_done: u64,
    warned: bool,
    skipped_for_time: usize,
    windows_inferred: usize,
    error: Option<anyhow::Error>,
    progress: Progress,
}

/// Score `files` with every model. `model_sets` holds one copy of the ensemble per inference
/// worker (each worker runs its own sessions on its own batches: ONNX Runtime gains more from
/// parallel single-threaded sessions than from intra-op threads). The sets must agree (see
/// [`crate::model::check_ensemble`]).
pub fn run(
    files: &[PathBuf],
    model_sets: Vec<Vec<OnnxModel>>,
    cfg: &RunConfig,
) -> Result<RunOutput> {
    let start = Instant::now();
    let models = model_sets
        .first()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| anyhow!("no models"))?;
    let classes = models[0].classes();
    let n_models = models.len();
    // Distinct frontends, computed once each.
    let mut configs: Vec<FrontendConfig> = Vec::new();
    let mut model_frontend = Vec::new();
    for m in models.iter() {
        let i = match configs.iter().position(|c| *c == m.card.frontend) {
            Some(i) => i,
            None => {
                configs.push(m.card.frontend.clone());
                configs.len() - 1
            }
        };
        model_frontend.push(i);
    }
    let frontends = configs
        .into_iter()
        .map(Frontend::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("model frontend: {e}"))?;

    let sizes: Vec<u64> = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0).max(1))
        .collect();
    let total_bytes: u64 = sizes.iter().sum();
    let batch = cfg.batch_size.max(1);
    let workers = model_sets.len();
    let (tx, rx) = sync_channel::<Msg>(4 * batch * workers);
    let rx = Mutex::new(rx);
    let stop = AtomicBool::new(false);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.decode_threads.max(1))
        .thread_name(|i| format!("decode-{i}"))
        .build()
        .map_err(|e| anyhow!("cannot start decode threads: {e}"))?;
    let state = Mutex::new(State {
        scores: files
            .iter()
            .map(|p| FileScores {
                path: p.clone(),
                probs: Vec::new(),
                windows: 0,
                failure: None,
                seconds: 0.0,
            })
            .collect(),
        files_done: 0,
        bytes_done: 0,
        warned: false,
        skipped_for_time: 0,
        windows_inferred: 0,
        error: None,
        progress: Progress {
            start,
            last: start,
            enabled: cfg.progress,
        },
    });

    std::thread::scope(|scope| {
        let frontends = &frontends;
        let stop = &stop;
        scope.spawn(move || {
            pool.install(|| {
                files
                    .par_iter()
                    .enumerate()
                    .for_each_with(tx, |tx, (i, p)| process_file(i, p, frontends, tx, stop));
            });
        });
        for mut set in model_sets {
            let (rx, state, sizes, model_frontend) = (&rx, &state, &sizes, &model_frontend);
            scope.spawn(move || {
                let mut consumer = Consumer {
                    models: &mut set,
                    model_frontend,
                    classes,
                    pending: Vec::new(),
                    inputs: vec![Vec::new(); frontends.len()],
                    probs: Vec::new(),
                };
                let fail = |e: anyhow::Error| {
                    // Keep draining the channel so no decoder blocks; start no new files.
                    stop.store(true, Ordering::Relaxed);
                    let mut st = lock(state);
                    if st.error.is_none() {
                        st.error = Some(e);
                    }
                };
                loop {
                    let msg = lock(rx).recv();
                    let Ok(msg) = msg else { break };
                    match msg {
                        Msg::Window {
                            file,
                            index,
                            features,
                        } => {
                            consumer.push(file, index, features);
                            if consumer.pending.len() >= batch {
                                if let Err(e) = consumer.flush(state, n_models) {
                                    fail(e);
                                }
                            }
                        }
                        Msg::Done {
                            file,
                            windows,
                            expected,
                            seconds,
                            error,
                        } => {
                            let mut st = lock(state);
                            let st = &mut *st;
                            let s = &mut st.scores[file];
                            s.windows = expected;
                            s.seconds = seconds;
                            if let Some(reason) = error {
                                if reason.starts_with("skipped:") {
                                    st.skipped_for_time += 1;
                                }
                                s.failure = Some(Failure {
                                    reason,
                                    decoded_windows: windows,
                                });
                            }
                            st.files_done += 1;
                            st.bytes_done += sizes[file];
                            if let Some(limit) = cfg.time_limit {
                                let elapsed = start.elapsed().as_secs_f64();
                                let projected =
                                    elapsed * total_bytes as f64 / st.bytes_done as f64;
                                if projected > limit.as_secs_f64() && st.files_done >= 3 && !st.warned
                                {
                                    st.warned = true;
                                    eprintln!(
                                        "\nwarning: projected total {} exceeds the time limit {} \
                                         ({} of {} files in {}){}",
                                        fmt_secs(projected),
                                        fmt_secs(limit.as_secs_f64()),
                                        st.files_done,
                                        files.len(),
                                        fmt_secs(elapsed),
                                        if cfg.strict {
                                            "; --strict: no new files are started, the rest get fallback rows"
                                        } else {
                                            ""
                                        }
                                    );
                                    if cfg.strict {
                                        stop.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                            let (done, windows) = (st.files_done, st.windows_inferred);
                            st.progress.tick(done, files.len(), windows, false);
                        }
                    }
                }
                if let Err(e) = consumer.flush(state, n_models) {
                    fail(e);
                }
            });
        }
    });
    let mut st = state.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = st.error.take() {
        return Err(e);
    }
    let (done, windows) = (st.files_done, st.windows_inferred);
    st.progress.tick(done, files.len(), windows, true);
    // Fill rows that never got a prediction with the fallback value.
    for s in &mut st.scores {
        s.probs
            .resize(s.windows * n_models * classes, FALLBACK_PROBABILITY);
    }
    Ok(RunOutput {
        files: st.scores,
        models: n_models,
        classes,
        skipped_for_time: st.skipped_for_time,
        elapsed: start.elapsed(),
        windows_inferred: st.windows_inferred,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Consumer<'a> {
    models: &'a mut [OnnxModel],
    model_frontend: &'a [usize],
    classes: usize,
    pending: Vec<(usize, usize)>,
    inputs: Vec<Vec<f32>>,
    /// Sigmoid outputs of the last batch, `[model][row * classes + class]`.
    probs: Vec<Vec<f32>>,
}

impl Consumer<'_> {
    fn push(&mut self, file: usize, index: usize, features: Vec<Vec<f32>>) {
        self.pending.push((file, index));
        for (buf, f) in self.inputs.iter_mut().zip(features) {
            buf.extend_from_slice(&f);
        }
    }

    /// Run every model on the pending windows (outside the lock), then store the sigmoid
    /// probabilities.
    fn flush(&mut self, state: &Mutex<State>, n_models: usize) -> Result<()> {
        let n = self.pending.len();
        if n == 0 {
            return Ok(());
        }
        let k = self.classes;
        self.probs.clear();
        for (m, model) in self.models.iter_mut().enumerate() {
            let logits = model.run(&self.inputs[self.model_frontend[m]], n)?;
            self.probs
                .push(logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect());
        }
        let mut st = lock(state);
        for (row, &(file, index)) in self.pending.iter().enumerate() {
            let probs = &mut st.scores[file].probs;
            let need = (index + 1) * n_models * k;
            if probs.len() < need {
                probs.resize(need, FALLBACK_PROBABILITY);
            }
            for (m, p) in self.probs.iter().enumerate() {
                probs[(index * n_models + m) * k..(index * n_models + m + 1) * k]
                    .copy_from_slice(&p[row * k..(row + 1) * k]);
            }
        }
        st.windows_inferred += n;
        drop(st);
        self.pending.clear();
        self.inputs.iter_mut().for_each(Vec::clear);
        Ok(())
    }
}

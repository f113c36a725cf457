//! The scoring pipeline: every worker thread decodes, computes features and runs its own copy of
//! every model (an ONNX Runtime session or an OpenVINO compilation), in bounded memory.
//!
//! A worker (one per core by default) repeatedly takes the most useful job: a decoded piece
//! waiting for inference (up to [`PIECE_WINDOWS`] of one file's windows in batches, run through
//! every model in turn); else the next piece of a file that is being decoded ([`AudioStream`],
//! 5-s windows cut as samples arrive, features computed once per distinct frontend among the
//! models, straight into the piece's input tensor); else the next file. So no core is
//! oversubscribed, a piece is usually inferred by the core that just computed its features
//! (still in its cache), the share of decoding and inference adapts to the number of models, and
//! the last file is shared out piece by piece rather than leaving cores idle. However long a file
//! is, only a few pieces exist at once: a worker decodes only when no piece is waiting.
//!
//! Small batches run faster on the CPU than large ones (on the 2-core development machine, 4 or 8
//! windows of 1×224×224 gave 1.2-1.6× the windows/s of 48, whose activations no longer fit in
//! the cache); see `bench/infer.sh`.
//!
//! A file that cannot be decoded does not stop the run: the windows decoded before the failure
//! keep their predictions; the rest of the file (as long as its header says it is, at least one
//! window) gets the fallback probability [`FALLBACK_PROBABILITY`], and the failure is reported.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use birdclef_models::audio::AudioStream;
use birdclef_models::frontend::{padded_range, Frontend, FrontendConfig, FrontendError};

use crate::error_chain::error_chain;
use crate::model::{ModelError, OnnxModel};

/// Why a run stopped. A file that cannot be decoded does not stop it (see [`Failure`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// [`run`] was given no models.
    #[error("no models to score with")]
    NoModels,
    /// A model card's frontend cannot be built.
    #[error("{path}: the model card's frontend cannot be built")]
    Frontend {
        /// The model whose card it is.
        path: PathBuf,
        /// Why.
        #[source]
        cause: FrontendError,
    },
    /// A model failed on a batch (the error names it).
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The probability given to every species in windows whose audio could not be decoded.
pub const FALLBACK_PROBABILITY: f32 = 0.0;

/// Windows per inference batch unless told otherwise: raw ONNX Runtime ran batches of 4 about 3%
/// faster than 8 on the AMD EPYC development VM, and birdclef-infer 2% (five models, 128
/// soundscapes: 29.3 -> 28.8 s in three alternating runs; the submission is byte-identical).
pub const DEFAULT_BATCH_SIZE: usize = 4;

/// Windows in a piece (rounded up to whole batches). Each model runs on the piece's batches one
/// after the other, so its weights are read from memory once per piece rather than once per
/// batch: with 5 models of 9.5 MB (more than the EPYC development VM's 32 MB L3 cache) 16
/// windows per piece instead of 8 saved 2-3% of the time, and 48 (a whole 4-min soundscape)
/// another 1.3-2.6% (128 soundscapes, alternating runs).
pub const PIECE_WINDOWS: usize = 48;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Worker threads, each decoding, computing features and running its own sessions of every
    /// model.
    pub workers: usize,
    /// Windows per inference batch (a piece of a file decoded at once holds [`PIECE_WINDOWS`]
    /// windows, rounded up to whole batches).
    pub batch_size: usize,
    /// Warn when the projected total time exceeds this.
    pub time_limit: Option<Duration>,
    /// With a time limit: stop starting new files once the projection exceeds it.
    pub strict: bool,
    /// Print a progress line to stderr.
    pub progress: bool,
    /// Time-shift test-time augmentation: every window is also scored at each of these shifts
    /// (seconds; negative = earlier), and each model's probabilities are the mean over the views.
    /// A view is clamped to the recording (a shift past its start or end slides back inside, so
    /// at the edges it repeats, or comes near, the window itself); a last window shorter than the
    /// window length is scored once, as it is. Empty: no augmentation.
    pub tta_shifts: Vec<f64>,
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
    /// Things the user should know that did not stop the run.
    pub warnings: Vec<String>,
}

/// Up to a piece of decoded windows of one file, ready for the models.
struct Piece {
    file: usize,
    /// Index of the first window in its file.
    first: usize,
    /// Number of windows.
    windows: usize,
    /// Per distinct frontend, the model inputs of all windows back to back: the batches' tensors.
    inputs: Vec<Vec<f32>>,
}

/// A file whose decoding has started, parked between pieces.
struct OpenFile {
    file: usize,
    stream: AudioStream,
    /// Windows its header promises (the rows it keeps if decoding fails later).
    expected: usize,
    /// Decoded samples not yet cut into a window.
    buf: Vec<f32>,
    /// Windows cut so far.
    windows: usize,
    /// Samples decoded so far.
    samples: usize,
    /// The file's sample index of `buf[0]` (`buf` keeps what earlier shifted views need).
    buf_start: usize,
}

/// How a file's decoding ended.
struct Finished {
    file: usize,
    /// Windows with real predictions (or on their way to them).
    windows: usize,
    /// Rows the file gets.
    rows: usize,
    seconds: f64,
    /// What went wrong, naming the file.
    error: Option<String>,
    /// Not started because of the time limit.
    skipped: bool,
}

/// Windows a file of `seconds` (from its header) is expected to have.
fn expected_windows(cfg: &FrontendConfig, seconds: Option<f64>) -> usize {
    seconds
        .map(|s| cfg.window_count((s * f64::from(cfg.sample_rate)).round() as usize))
        .unwrap_or(1)
}

/// What a worker does next.
enum Job {
    Infer(Piece),
    Decode(Box<OpenFile>),
    Open(usize),
    Finish,
}

/// Everything the workers share, behind one lock.
struct Shared {
    /// The next file nobody has opened yet.
    next_file: usize,
    /// Files being decoded that no worker holds right now.
    parked: Vec<OpenFile>,
    /// Decoded pieces waiting for inference.
    ready: VecDeque<Piece>,
    /// Input buffers of inferred pieces, for the next pieces to fill.
    spare: Vec<Vec<Vec<f32>>>,
    /// Workers decoding a piece right now (they may add windows or park a file).
    decoding: usize,
    /// Start no new files (`--strict` and the time limit, or an error).
    stop: bool,
    scores: Vec<FileScores>,
    files_done: usize,
    bytes_done: u64,
    warned: bool,
    skipped_for_time: usize,
    windows_inferred: usize,
    warnings: Vec<String>,
    error: Option<ModelError>,
    progress: Progress,
}

/// What every worker reads.
struct Ctx<'a> {
    files: &'a [PathBuf],
    sizes: Vec<u64>,
    total_bytes: u64,
    frontends: Vec<Frontend>,
    /// For each model, the index of its frontend in `frontends`.
    model_frontend: Vec<usize>,
    n_models: usize,
    classes: usize,
    batch: usize,
    /// Windows per piece: several batches, so that each model runs on consecutive batches
    /// while its weights are in the cache.
    piece_windows: usize,
    /// Time-shift views of every window, in samples ([`RunnerConfig::tta_shifts`]).
    offsets: Vec<isize>,
    /// Samples before a window's start that its views need (the most negative offset).
    lead: usize,
    /// Samples after a window's end that its views need (the most positive offset).
    tail: usize,
    cfg: &'a RunnerConfig,
    start: Instant,
    shared: Mutex<Shared>,
    /// Signalled whenever a piece arrives, a file is parked, decoding ends or the run fails.
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ctx<'_> {
    /// The window policy every model shares (checked by [`crate::model::check_ensemble`]).
    fn policy(&self) -> &FrontendConfig {
        self.frontends[0].config()
    }

    /// Wait for the next job.
    fn next_job(&self) -> Job {
        let mut sh = lock(&self.shared);
        loop {
            if sh.error.is_some() {
                return Job::Finish;
            }
            if let Some(piece) = sh.ready.pop_front() {
                return Job::Infer(piece);
            }
            if let Some(f) = sh.parked.pop() {
                sh.decoding += 1;
                return Job::Decode(Box::new(f));
            }
            if sh.next_file < self.files.len() {
                let i = sh.next_file;
                sh.next_file += 1;
                sh.decoding += 1;
                return Job::Open(i);
            }
            if sh.decoding == 0 {
                return Job::Finish;
            }
            sh = self
                .changed
                .wait(sh)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// An empty piece of `file` starting at window `first`, with buffers for a piece.
    fn piece(&self, file: usize, first: usize) -> Piece {
        let inputs = lock(&self.shared).spare.pop().unwrap_or_else(|| {
            self.frontends
                .iter()
                .map(|fe| {
                    let [c, h, w] = fe.config().input_shape();
                    Vec::with_capacity(self.piece_windows * c * h * w)
                })
                .collect()
        });
        Piece {
            file,
            first,
            windows: 0,
            inputs,
        }
    }

    /// Model inputs per window: the window itself and its time-shifted views.
    fn views(&self) -> usize {
        1 + self.offsets.len()
    }

    /// Append the model inputs of `clip` (every frontend) to `piece`, as one view.
    fn push_clip(&self, piece: &mut Piece, clip: &[f32]) {
        for (fe, buf) in self.frontends.iter().zip(&mut piece.inputs) {
            let [c, h, w] = fe.config().input_shape();
            let start = buf.len();
            buf.resize(start + c * h * w, 0.0);
            fe.compute_clip_into(clip, &mut buf[start..]);
        }
    }

    /// Append again the view whose inputs start at `at` (one offset per frontend, as
    /// [`Piece::inputs`]' lengths were before it was pushed): a view equal to one already there.
    fn repeat_view(&self, piece: &mut Piece, at: &[usize]) {
        for ((fe, buf), &at) in self.frontends.iter().zip(&mut piece.inputs).zip(at) {
            let [c, h, w] = fe.config().input_shape();
            buf.extend_from_within(at..at + c * h * w);
        }
    }

    /// Append window `f.windows` of `f` (a whole window length at sample `f.windows · w`) and
    /// its views to `piece`. `end` is the file's length in samples once decoding ended; before
    /// that, `f.buf` must hold [`Ctx::tail`] samples past the window.
    fn push_window(&self, piece: &mut Piece, f: &OpenFile, end: Option<usize>) {
        let w = self.policy().window_samples();
        let g = f.windows * w;
        let mut scratch = Vec::new();
        let own: Vec<usize> = piece.inputs.iter().map(Vec::len).collect();
        self.push_clip(piece, self.input_at(f, g, &mut scratch));
        for &off in &self.offsets {
            let mut start = (g as isize + off).max(0) as usize;
            if let Some(end) = end {
                start = start.min(end - w);
            }
            if start == g {
                // Clamped onto the window itself: its inputs again, not computed twice.
                self.repeat_view(piece, &own);
            } else {
                self.push_clip(piece, self.input_at(f, start, &mut scratch));
            }
        }
        piece.windows += 1;
    }

    /// The model input of the window starting at sample `start` of `f`: the window, or the
    /// context centred on it; zeros before the file's start and past what was decoded (at the
    /// file's end: before that, [`Ctx::tail`] samples past the window are there).
    fn input_at<'a>(&self, f: &'a OpenFile, start: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        let policy = self.policy();
        let from = start as isize - policy.context_lead() as isize - f.buf_start as isize;
        padded_range(&f.buf, from, policy.input_samples(), scratch)
    }

    /// Append a file's last, partial window (zero-padded past the file's end) as every view.
    fn push_partial_window(&self, piece: &mut Piece, f: &OpenFile) {
        let own: Vec<usize> = piece.inputs.iter().map(Vec::len).collect();
        let mut scratch = Vec::new();
        self.push_clip(
            piece,
            self.input_at(f, f.windows * self.policy().window_samples(), &mut scratch),
        );
        for _ in &self.offsets {
            self.repeat_view(piece, &own);
        }
        piece.windows += 1;
    }

    /// Open file `i` and decode its first piece; a file that cannot be opened, or is not started
    /// because of the time limit, is finished at once.
    fn open(&self, i: usize) {
        let path = &self.files[i];
        let policy = self.policy();
        if lock(&self.shared).stop {
            // Not started for lack of time: rows come from the header's duration.
            let rows = AudioStream::open(path)
                .map(|s| expected_windows(policy, s.source_info().duration_seconds()))
                .unwrap_or(1);
            return self.finish_decoding(
                None,
                Finished {
                    file: i,
                    windows: 0,
                    rows,
                    seconds: 0.0,
                    error: Some(format!(
                        "{}: skipped: the time limit was reached",
                        path.display()
                    )),
                    skipped: true,
                },
            );
        }
        match AudioStream::open(path) {
            Ok(stream) => {
                let expected = expected_windows(policy, stream.source_info().duration_seconds());
                self.decode(Box::new(OpenFile {
                    file: i,
                    stream,
                    expected,
                    buf: Vec::with_capacity(2 * policy.window_samples() + self.lead + self.tail),
                    windows: 0,
                    samples: 0,
                    buf_start: 0,
                }));
            }
            Err(e) => self.finish_decoding(
                None,
                Finished {
                    file: i,
                    windows: 0,
                    rows: 1,
                    seconds: 0.0,
                    error: Some(error_chain(&e)),
                    skipped: false,
                },
            ),
        }
    }

    /// Decode the next piece of `f` (up to [`PIECE_WINDOWS`] windows), then park it or finish it.
    fn decode(&self, mut f: Box<OpenFile>) {
        let policy = self.policy();
        let w = policy.window_samples();
        let mut piece = self.piece(f.file, f.windows);
        // At the end of the run (every file open, and this one's header promises no more than a
        // piece per worker), pieces shrink to one batch, so that all workers share the last
        // windows rather than leaving them to whoever decoded a whole piece.
        let all_open = lock(&self.shared).next_file >= self.files.len();
        let left = f.expected.saturating_sub(f.windows);
        let piece_windows = if all_open && left <= self.piece_windows * self.cfg.workers.max(1) {
            self.batch
        } else {
            self.piece_windows
        };
        let mut ended = None;
        while piece.windows < piece_windows {
            if f.samples >= (f.windows + 1) * w + self.tail {
                self.push_window(&mut piece, &f, None);
                f.windows += 1;
                // Keep what the next window's earlier views need.
                let keep_from = (f.windows * w).saturating_sub(self.lead);
                f.buf.drain(..keep_from - f.buf_start);
                f.buf_start = keep_from;
                continue;
            }
            let before = f.buf.len();
            let read = f.stream.read_into(&mut f.buf);
            f.samples += f.buf.len() - before;
            match read {
                Ok(true) => {}
                Ok(false) => {
                    ended = Some(None);
                    break;
                }
                Err(e) => {
                    ended = Some(Some(error_chain(&e)));
                    break;
                }
            }
        }
        let Some(error) = ended else {
            let mut sh = lock(&self.shared);
            sh.ready.push_back(piece);
            sh.parked.push(*f);
            sh.decoding -= 1;
            drop(sh);
            self.changed.notify_all();
            return;
        };
        // Whole windows that waited for their later views' samples (none without shifts), then
        // the last, partial window, when the window policy keeps it (long enough, or all the file
        // has). A file that decoded nothing gets no window here: its row is a fallback. (The
        // piece may grow past its size by these few windows.)
        while f.samples >= (f.windows + 1) * w {
            self.push_window(&mut piece, &f, Some(f.samples));
            f.windows += 1;
        }
        if f.samples > 0 && policy.window_count(f.samples) > f.windows {
            self.push_partial_window(&mut piece, &f);
            f.windows += 1;
        }
        // A clean decode's own window count is authoritative; a failed file keeps the rows its
        // header promised, so the submission has them all.
        let rows = match error {
            Some(_) => f.expected.max(f.windows),
            None => f.windows,
        };
        self.finish_decoding(
            Some(piece),
            Finished {
                file: f.file,
                windows: f.windows,
                rows: rows.max(1),
                seconds: f.samples as f64 / f64::from(policy.sample_rate),
                error,
                skipped: false,
            },
        );
    }

    /// Record a file whose decoding ended, with its last windows; check the time limit.
    fn finish_decoding(&self, last: Option<Piece>, done: Finished) {
        let mut sh = lock(&self.shared);
        let sh = &mut *sh;
        sh.ready.extend(last.filter(|p| p.windows > 0));
        sh.decoding -= 1;
        let s = &mut sh.scores[done.file];
        s.windows = done.rows;
        s.seconds = done.seconds;
        sh.skipped_for_time += usize::from(done.skipped);
        if let Some(reason) = done.error {
            s.failure = Some(Failure {
                reason,
                decoded_windows: done.windows,
            });
        }
        sh.files_done += 1;
        sh.bytes_done += self.sizes[done.file];
        if let Some(limit) = self.cfg.time_limit {
            let elapsed = self.start.elapsed().as_secs_f64();
            let projected = elapsed * self.total_bytes as f64 / sh.bytes_done as f64;
            if projected > limit.as_secs_f64() && sh.files_done >= 3 && !sh.warned {
                sh.warned = true;
                eprintln!(
                    "\nwarning: projected total {} exceeds the time limit {} ({} of {} files in {}){}",
                    fmt_secs(projected),
                    fmt_secs(limit.as_secs_f64()),
                    sh.files_done,
                    self.files.len(),
                    fmt_secs(elapsed),
                    if self.cfg.strict {
                        "; --strict: no new files are started, the rest get fallback rows"
                    } else {
                        ""
                    }
                );
                if self.cfg.strict {
                    sh.stop = true;
                }
            }
        }
        let (done, windows) = (sh.files_done, sh.windows_inferred);
        sh.progress.tick(done, self.files.len(), windows, false);
        self.changed.notify_all();
    }

    /// Run every model on `piece` (outside the lock), then store probabilities (sigmoid, or
    /// softmax for a card that says so; with
    /// time-shift views, each model's mean over a window's views).
    fn infer(&self, models: &mut [OnnxModel], piece: Piece) -> Result<(), ModelError> {
        let n = piece.windows;
        let k = self.classes;
        let views = self.views();
        let inputs = n * views;
        let mut probs = Vec::with_capacity(models.len());
        for (m, model) in models.iter_mut().enumerate() {
            let input = &piece.inputs[self.model_frontend[m]];
            let per_input = input.len() / inputs.max(1);
            let mut p = Vec::with_capacity(inputs * k);
            for first in (0..inputs).step_by(self.batch) {
                let len = self.batch.min(inputs - first);
                let batch = &input[first * per_input..(first + len) * per_input];
                let mut logits = model.run(batch, len)?;
                model.card.output_activation.apply(&mut logits, k);
                p.extend(logits);
            }
            if views > 1 {
                p = mean_of_views(&p, views, k);
            }
            probs.push(p);
        }
        let n_models = self.n_models;
        let mut sh = lock(&self.shared);
        let stored = &mut sh.scores[piece.file].probs;
        let need = (piece.first + n) * n_models * k;
        if stored.len() < need {
            stored.resize(need, FALLBACK_PROBABILITY);
        }
        for row in 0..n {
            for (m, p) in probs.iter().enumerate() {
                let at = ((piece.first + row) * n_models + m) * k;
                stored[at..at + k].copy_from_slice(&p[row * k..(row + 1) * k]);
            }
        }
        sh.windows_inferred += n;
        let mut inputs = piece.inputs;
        inputs.iter_mut().for_each(Vec::clear);
        sh.spare.push(inputs);
        Ok(())
    }

    /// Stop the run with `e` (the first error wins); every worker finishes.
    fn fail(&self, e: ModelError) {
        let mut sh = lock(&self.shared);
        sh.stop = true;
        if sh.error.is_none() {
            sh.error = Some(e);
        }
        drop(sh);
        self.changed.notify_all();
    }

    /// One worker: jobs until there are none.
    fn work(&self, models: &mut [OnnxModel]) {
        loop {
            match self.next_job() {
                Job::Finish => break,
                Job::Infer(piece) => {
                    if let Err(e) = self.infer(models, piece) {
                        self.fail(e);
                    }
                }
                Job::Decode(f) => self.decode(f),
                Job::Open(i) => self.open(i),
            }
        }
    }
}

/// `p` holds `windows × views × k` values; the mean over each window's views, `windows × k`.
fn mean_of_views(p: &[f32], views: usize, k: usize) -> Vec<f32> {
    let scale = 1.0 / views as f32;
    p.chunks_exact(views * k)
        .flat_map(|window| {
            (0..k).map(move |c| (0..views).map(|v| window[v * k + c]).sum::<f32>() * scale)
        })
        .collect()
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

/// Score `files` with the ensemble `models` on `cfg.workers` threads. Worker 0 uses `models`; each
/// other worker builds its own sessions with `load` on its own thread, while the others already
/// work (ONNX Runtime gains more from parallel single-threaded sessions than from intra-op
/// threads). A worker whose sessions cannot be built leaves the work to the others, with a
/// warning. The models must agree (see [`crate::model::check_ensemble`]).
pub fn run<L>(
    files: &[PathBuf],
    models: Vec<OnnxModel>,
    load: L,
    cfg: &RunnerConfig,
) -> Result<RunOutput, RunnerError>
where
    L: Fn() -> Result<Vec<OnnxModel>, ModelError> + Sync,
{
    let start = Instant::now();
    if models.is_empty() {
        return Err(RunnerError::NoModels);
    }
    let classes = models[0].classes();
    let n_models = models.len();
    // Distinct frontends, computed once each (with the first model that has each).
    let mut configs: Vec<(&FrontendConfig, &PathBuf)> = Vec::new();
    let mut model_frontend = Vec::new();
    for m in models.iter() {
        let i = match configs.iter().position(|(c, _)| **c == m.card.frontend) {
            Some(i) => i,
            None => {
                configs.push((&m.card.frontend, &m.path));
                configs.len() - 1
            }
        };
        model_frontend.push(i);
    }
    let frontends = configs
        .into_iter()
        .map(|(config, path)| {
            Frontend::new(config.clone()).map_err(|cause| RunnerError::Frontend {
                path: path.clone(),
                cause,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let sizes: Vec<u64> = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0).max(1))
        .collect();
    let total_bytes: u64 = sizes.iter().sum();
    let rate = f64::from(frontends[0].config().sample_rate);
    let offsets: Vec<isize> = cfg
        .tta_shifts
        .iter()
        .map(|s| (s * rate).round() as isize)
        .collect();
    let lead = offsets
        .iter()
        .map(|&o| (-o).max(0) as usize)
        .max()
        .unwrap_or(0);
    let tail = offsets
        .iter()
        .map(|&o| o.max(0) as usize)
        .max()
        .unwrap_or(0);
    // A context reaches beyond each window (and each view) on both sides.
    let policy = frontends[0].config();
    let context_lead = policy.context_lead();
    let context_tail = policy.input_samples() - policy.window_samples() - context_lead;
    let (lead, tail) = (lead + context_lead, tail + context_tail);
    let ctx = Ctx {
        files,
        total_bytes,
        sizes,
        frontends,
        model_frontend,
        n_models,
        classes,
        batch: cfg.batch_size.max(1),
        piece_windows: PIECE_WINDOWS.div_ceil(cfg.batch_size.max(1)) * cfg.batch_size.max(1),
        offsets,
        lead,
        tail,
        cfg,
        start,
        shared: Mutex::new(Shared {
            next_file: 0,
            parked: Vec::new(),
            ready: VecDeque::new(),
            spare: Vec::new(),
            decoding: 0,
            stop: false,
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
            warnings: Vec::new(),
            error: None,
            progress: Progress {
                start,
                last: start,
                enabled: cfg.progress,
            },
        }),
        changed: Condvar::new(),
    };
    // More workers than files still help: while one decodes a file, another infers its windows.
    let extra = if files.is_empty() {
        0
    } else {
        cfg.workers.max(1) - 1
    };
    std::thread::scope(|scope| {
        let (ctx, load) = (&ctx, &load);
        for k in 1..=extra {
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{k}"))
                .spawn_scoped(scope, move || match load() {
                    Ok(mut set) => ctx.work(&mut set),
                    Err(e) => lock(&ctx.shared).warnings.push(format!(
                        "worker {k} could not make its copies of the models and did not run: {}",
                        error_chain(&e)
                    )),
                });
            if let Err(e) = spawned {
                lock(&ctx.shared)
                    .warnings
                    .push(format!("cannot start worker {k}: {e}"));
            }
        }
        let mut models = models;
        ctx.work(&mut models);
    });
    let mut sh = ctx
        .shared
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = sh.error.take() {
        return Err(e.into());
    }
    let (done, windows) = (sh.files_done, sh.windows_inferred);
    sh.progress.tick(done, files.len(), windows, true);
    // Fill rows that never got a prediction with the fallback value.
    for s in &mut sh.scores {
        s.probs
            .resize(s.windows * n_models * classes, FALLBACK_PROBABILITY);
    }
    Ok(RunOutput {
        files: sh.scores,
        models: n_models,
        classes,
        skipped_for_time: sh.skipped_for_time,
        elapsed: start.elapsed(),
        windows_inferred: sh.windows_inferred,
        warnings: sh.warnings,
    })
}

//! Post-processing of model outputs: logits → probabilities, ensembling several models,
//! smoothing over neighbouring windows of one recording and per-file scaling.
//!
//! Every matrix here is `[rows × species]`: one row per window, one column per species, in the
//! model card's label order. Each step is optional except the sigmoid; in a run they apply in
//! this order (see `predict::combine`):
//!
//! * [`sigmoid_in_place`] ([`sigmoid`], from the IR) turns logits into probabilities (numerically
//!   stable for large positive and negative logits). With [`Shifts`] (time-shift test-time
//!   augmentation) each model's probabilities of a window are the mean over its views.
//! * [`ensemble`] combines the probability matrices of several models row by row:
//!   [`Ensemble::Mean`], [`Ensemble::Min`], [`Ensemble::Geometric`] mean, [`Ensemble::Rank`]
//!   average or [`Ensemble::Power`] mean.
//! * [`smooth`] replaces each window's probability by a weighted mean over its neighbours in the
//!   same recording, with a [`Kernel`] such as `0.1,0.2,0.4,0.2,0.1`.
//! * [`file_max`] combines each window with the recording's per-species maximum ([`FileMax`]).

use std::fmt;
use std::str::FromStr;

use birdclef_models::ir::sigmoid;
use ndarray::{Array, Array2, ArrayView1, Dimension, Zip};

/// Probabilities are clamped to at least this before the logarithm of [`Ensemble::Geometric`].
pub const GEOMETRIC_FLOOR: f32 = 1e-7;

/// Why post-processing could not run. Bad input is an error, never a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PostprocessError {
    /// [`ensemble`] was given no model.
    #[error("ensemble of zero models: give at least one prediction matrix")]
    NoModels,
    /// The models' matrices do not all have the same shape.
    #[error(
        "model {index} predicts {got:?} (rows, species) but model 0 predicts {expected:?}: \
         every model must score the same windows and species"
    )]
    ShapeMismatch {
        /// Index of the first model whose shape differs.
        index: usize,
        /// Shape of model 0.
        expected: (usize, usize),
        /// Shape of model `index`.
        got: (usize, usize),
    },
    /// A smoothing kernel is not valid.
    #[error("invalid smoothing kernel {kernel:?}: {reason}")]
    InvalidKernel {
        /// The kernel as given.
        kernel: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The name of an ensembling method is not known.
    #[error(
        "unknown ensemble method {0:?}: expected mean, min, geometric, rank or power:Q \
         (e.g. power:2)"
    )]
    UnknownEnsemble(String),
    /// A power mean's exponent is 0 or not finite.
    #[error("ensemble {0:?}: the power mean's exponent must be a finite number other than 0")]
    InvalidPower(String),
    /// A `--tta-shifts` list is not valid.
    #[error("invalid --tta-shifts {given:?}: {reason} (expected seconds, e.g. -2.5,2.5)")]
    InvalidShifts {
        /// The list as given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--file-max` setting is not valid.
    #[error("invalid --file-max {given:?}: {reason}")]
    InvalidFileMax {
        /// The setting as given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Apply [`sigmoid`] to every element of an array of logits, in place.
pub fn sigmoid_in_place<D: Dimension>(logits: &mut Array<f32, D>) {
    logits.mapv_inplace(sigmoid);
}

/// How [`ensemble`] combines the probability matrices of several models.
///
/// On the command line: `mean`, `min`, `geometric`, `rank`, or `power:Q` (`power` alone is
/// `power:2`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Ensemble {
    /// Arithmetic mean of the probabilities.
    #[default]
    Mean,
    /// The smallest of the models' probabilities: a species counts only where every model sees
    /// it (BirdCLEF 2024's first place ensembled this way).
    Min,
    /// Rank average: per model and species, each row's average rank among all rows of this run
    /// (ties share their mean rank), scaled to [0, 1]; then the mean over models. The result
    /// orders rows but is no longer a probability, and it depends on which rows are ranked
    /// together: with `--shard`, each shard ranks its own rows only.
    Rank,
    /// Geometric mean, `exp(mean(ln(max(p, 1e-7))))`.
    Geometric,
    /// Power mean `(mean(p^q))^(1/q)` with exponent `q` (finite, not 0): `q = 1` is the mean,
    /// larger `q` leans towards the largest model, negative `q` towards the smallest.
    Power(f32),
}

/// The exponent of `power` without one.
pub const DEFAULT_POWER: f32 = 2.0;

impl Ensemble {
    /// The name of the method, without a power mean's exponent.
    pub fn name(self) -> &'static str {
        match self {
            Ensemble::Mean => "mean",
            Ensemble::Min => "min",
            Ensemble::Rank => "rank",
            Ensemble::Geometric => "geometric",
            Ensemble::Power(_) => "power",
        }
    }
}

impl fmt::Display for Ensemble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ensemble::Power(q) => write!(f, "power:{q}"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for Ensemble {
    type Err = PostprocessError;

    /// Parse `mean`, `min`, `rank`, `geometric` (also `geo`, `gmean`) or `power[:Q]`,
    /// case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, arg) = match lower.split_once(':') {
            Some((name, arg)) => (name.trim(), Some(arg.trim())),
            None => (lower.as_str(), None),
        };
        let unknown = || PostprocessError::UnknownEnsemble(s.to_string());
        let method = match name {
            "mean" => Ensemble::Mean,
            "min" => Ensemble::Min,
            "rank" => Ensemble::Rank,
            "geometric" | "geo" | "gmean" => Ensemble::Geometric,
            "power" => {
                let q = match arg {
                    None => DEFAULT_POWER,
                    Some(text) => text.parse::<f32>().map_err(|_| unknown())?,
                };
                if !q.is_finite() || q == 0.0 {
                    return Err(PostprocessError::InvalidPower(s.to_string()));
                }
                return Ok(Ensemble::Power(q));
            }
            _ => return Err(unknown()),
        };
        if arg.is_some() {
            return Err(unknown());
        }
        Ok(method)
    }
}

/// Combine the `[rows × species]` probability matrices of several models into one.
///
/// All matrices must have the same shape. With one model, [`Ensemble::Mean`] and
/// [`Ensemble::Geometric`] return it unchanged (up to the 1e-7 floor of the geometric mean), and
/// [`Ensemble::Rank`] returns its scaled ranks.
///
/// [`Ensemble::Rank`] ranks the rows *of this call*: the rank of a window depends on every
/// other window passed in, so shards of one run, ranked separately, are not comparable with an
/// unsharded run. Each column's average ranks `r ∈ [1, rows]` (ties get the mean of the ranks
/// they span) are scaled as `(r − 1) / (rows − 1)`; a single row (or a column of ties only)
/// gets 0.5. NaN ranks above every number.
///
/// # Errors
///
/// [`PostprocessError::NoModels`] for an empty slice and [`PostprocessError::ShapeMismatch`]
/// when the shapes differ.
pub fn ensemble(preds: &[Array2<f32>], how: Ensemble) -> Result<Array2<f32>, PostprocessError> {
    let first = preds.first().ok_or(PostprocessError::NoModels)?;
    let shape = first.dim();
    if let Some((index, p)) = preds.iter().enumerate().find(|(_, p)| p.dim() != shape) {
        return Err(PostprocessError::ShapeMismatch {
            index,
            expected: shape,
            got: p.dim(),
        });
    }
    let m = preds.len() as f32;
    let out = match how {
        Ensemble::Mean => {
            let mut acc = Array2::<f32>::zeros(shape);
            for p in preds {
                acc += p;
            }
            acc.mapv_inplace(|v| v / m);
            acc
        }
        Ensemble::Min => {
            let mut acc = first.clone();
            for p in &preds[1..] {
                Zip::from(&mut acc).and(p).for_each(|a, &v| *a = a.min(v));
            }
            acc
        }
        Ensemble::Geometric => {
            let mut acc = Array2::<f32>::zeros(shape);
            for p in preds {
                Zip::from(&mut acc)
                    .and(p)
                    .for_each(|a, &v| *a += v.max(GEOMETRIC_FLOOR).ln());
            }
            acc.mapv_inplace(|v| (v / m).exp());
            acc
        }
        Ensemble::Power(q) => {
            // In f64: p^q of a small p with a large |q| under- or overflows f32.
            let q = f64::from(q);
            let mut acc = Array2::<f64>::zeros(shape);
            for p in preds {
                Zip::from(&mut acc)
                    .and(p)
                    .for_each(|a, &v| *a += f64::from(v.max(0.0)).powf(q));
            }
            acc.mapv(|v| (v / f64::from(m)).powf(1.0 / q) as f32)
        }
        Ensemble::Rank => {
            let mut acc = Array2::<f32>::zeros(shape);
            let mut ranks = vec![0.0f32; shape.0];
            for p in preds {
                for (c, column) in p.columns().into_iter().enumerate() {
                    scaled_average_ranks(column, &mut ranks);
                    for (a, &r) in acc.column_mut(c).iter_mut().zip(&ranks) {
                        *a += r;
                    }
                }
            }
            acc.mapv_inplace(|v| v / m);
            acc
        }
    };
    Ok(out)
}

/// Average ranks (ties share their mean rank) of `values`, scaled to [0, 1], written to `out`.
fn scaled_average_ranks(values: ArrayView1<'_, f32>, out: &mut [f32]) {
    let n = values.len();
    if n == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let scale = if n > 1 { 1.0 / (n - 1) as f64 } else { 0.0 };
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        // -0.0 and 0.0 tie; so do equal NaNs.
        while j < n && same_score(values[order[j]], values[order[i]]) {
            j += 1;
        }
        // 0-based ranks i..j-1 share their mean (i + j - 1) / 2.
        let scaled = if n > 1 {
            ((i + j - 1) as f64 / 2.0 * scale) as f32
        } else {
            0.5
        };
        for &row in &order[i..j] {
            out[row] = scaled;
        }
        i = j;
    }
}

fn same_score(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// A validated smoothing kernel: odd length, non-negative weights, positive sum.
///
/// Parsed from comma-separated weights, e.g. `"0.1,0.2,0.4,0.2,0.1"`; the middle weight applies
/// to the window itself. The weights need not sum to one (see [`smooth`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel(Vec<f32>);

impl Kernel {
    /// Validate `weights` as a kernel.
    ///
    /// # Errors
    ///
    /// [`PostprocessError::InvalidKernel`] for an empty or even-length kernel, a negative or
    /// non-finite weight, or weights summing to zero.
    pub fn new(weights: Vec<f32>) -> Result<Self, PostprocessError> {
        validate_kernel(&weights)?;
        Ok(Kernel(weights))
    }

    /// The weights, centre in the middle.
    pub fn weights(&self) -> &[f32] {
        &self.0
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{w}")?;
        }
        Ok(())
    }
}

impl FromStr for Kernel {
    type Err = PostprocessError;

    /// Parse comma-separated weights (spaces allowed), e.g. `"0.1,0.2,0.4,0.2,0.1"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| PostprocessError::InvalidKernel {
            kernel: s.to_string(),
            reason,
        };
        let mut weights = Vec::new();
        for (i, part) in s.split(',').enumerate() {
            let part = part.trim();
            let w: f32 = part.parse().map_err(|_| {
                invalid(format!(
                    "weight {} is {part:?}, not a number (expected e.g. 0.1,0.2,0.4,0.2,0.1)",
                    i + 1
                ))
            })?;
            weights.push(w);
        }
        validate_kernel(&weights).map_err(|e| match e {
            PostprocessError::InvalidKernel { reason, .. } => invalid(reason),
            other => other,
        })?;
        Ok(Kernel(weights))
    }
}

fn validate_kernel(weights: &[f32]) -> Result<(), PostprocessError> {
    let invalid = |reason: String| PostprocessError::InvalidKernel {
        kernel: Kernel(weights.to_vec()).to_string(),
        reason,
    };
    if weights.is_empty() {
        return Err(invalid("it has no weights".into()));
    }
    if weights.len().is_multiple_of(2) {
        return Err(invalid(format!(
            "it has {} weights; it needs an odd number so that one is centred on the window",
            weights.len()
        )));
    }
    if let Some((i, w)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !w.is_finite() || **w < 0.0)
    {
        return Err(invalid(format!(
            "weight {} is {w}; weights must be finite and non-negative",
            i + 1
        )));
    }
    if weights.iter().map(|&w| f64::from(w)).sum::<f64>() <= 0.0 {
        return Err(invalid("its weights sum to zero".into()));
    }
    Ok(())
}

/// Smooth the `[windows × species]` probabilities of ONE recording over neighbouring windows.
///
/// `kernel` has odd length `2h + 1`; window `i` becomes the weighted mean
/// `Σⱼ k[j]·p[i + j − h] / Σⱼ k[j]` over the offsets `j` whose window `i + j − h` lies inside
/// the recording. Inside the recording the divisor is the whole kernel's sum (so the weights
/// need not sum to one); at the recording's first and last `h` windows the kernel weights that
/// would fall outside are dropped and the rest are renormalised by their own sum, so a constant
/// signal stays constant up to the edges. Should that partial sum be zero (e.g. kernel `1,0,1`
/// on a one-window recording), the window keeps its value.
///
/// Rows must be in time order (row `i` the window before row `i + 1`). Never smooth across two
/// recordings: call this once per file's rows.
///
/// # Errors
///
/// [`PostprocessError::InvalidKernel`] when `kernel` is not valid (see [`Kernel::new`]); `p`
/// is left unchanged then.
pub fn smooth(p: &mut Array2<f32>, kernel: &[f32]) -> Result<(), PostprocessError> {
    validate_kernel(kernel)?;
    let n = p.nrows();
    let h = kernel.len() / 2;
    if h == 0 || n == 0 {
        // A one-weight kernel is the identity after normalisation.
        return Ok(());
    }
    let original = p.clone();
    for i in 0..n {
        let lo = i.saturating_sub(h);
        let hi = (i + h).min(n - 1);
        let mut weight_sum = 0.0f64;
        for src in lo..=hi {
            weight_sum += f64::from(kernel[src + h - i]);
        }
        if weight_sum <= 0.0 {
            continue;
        }
        let mut row = p.row_mut(i);
        row.fill(0.0);
        for src in lo..=hi {
            let w = (f64::from(kernel[src + h - i]) / weight_sum) as f32;
            if w == 0.0 {
                continue;
            }
            row.scaled_add(w, &original.row(src));
        }
    }
    Ok(())
}

/// Per-file scaling: each window's probabilities combined with the file's per-species maximum
/// over its windows, so that a species heard clearly somewhere in a recording is raised in its
/// quieter windows, and one never heard stays low (BirdCLEF 2025's second place: +0.005 to
/// +0.01).
///
/// On the command line: `multiply` (`multiply:E` for an exponent other than 1) or `blend:A`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FileMax {
    /// `p · max^E` (E > 0; 1 is the plain product).
    Multiply(f32),
    /// `(1 − A)·p + A·max` (A in [0, 1]).
    Blend(f32),
}

impl fmt::Display for FileMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileMax::Multiply(e) => write!(f, "multiply:{e}"),
            FileMax::Blend(a) => write!(f, "blend:{a}"),
        }
    }
}

impl FromStr for FileMax {
    type Err = PostprocessError;

    /// Parse `multiply`, `multiply:E` or `blend:A`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| PostprocessError::InvalidFileMax {
            given: s.to_string(),
            reason: reason.to_string(),
        };
        let lower = s.trim().to_ascii_lowercase();
        let (name, arg) = match lower.split_once(':') {
            Some((name, arg)) => (name.trim(), Some(arg.trim())),
            None => (lower.as_str(), None),
        };
        let number = |text: &str| {
            text.parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| invalid("the value after ':' is not a finite number"))
        };
        match (name, arg) {
            ("multiply", None) => Ok(FileMax::Multiply(1.0)),
            ("multiply", Some(text)) => match number(text)? {
                e if e > 0.0 => Ok(FileMax::Multiply(e)),
                _ => Err(invalid("the exponent of multiply:E must be above 0")),
            },
            ("blend", Some(text)) => match number(text)? {
                a if (0.0..=1.0).contains(&a) => Ok(FileMax::Blend(a)),
                _ => Err(invalid("the weight of blend:A must be in [0, 1]")),
            },
            ("blend", None) => Err(invalid("blend needs its weight, e.g. blend:0.5")),
            _ => Err(invalid("expected multiply, multiply:E or blend:A")),
        }
    }
}

/// Apply [`FileMax`] to the `[windows × species]` probabilities of ONE recording: every value
/// is combined with its column's maximum over the recording's windows (taken before any change).
/// Call it once per file, on its real windows only. An empty matrix is left alone.
pub fn file_max(p: &mut Array2<f32>, how: FileMax) {
    if p.nrows() == 0 {
        return;
    }
    let maxima: Vec<f32> = p
        .columns()
        .into_iter()
        .map(|c| c.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    for mut row in p.rows_mut() {
        for (v, &mx) in row.iter_mut().zip(&maxima) {
            *v = match how {
                FileMax::Multiply(1.0) => *v * mx,
                FileMax::Multiply(e) => *v * mx.max(0.0).powf(e),
                FileMax::Blend(a) => (1.0 - a) * *v + a * mx,
            };
        }
    }
}

/// Time-shift test-time augmentation: the shifts, in seconds, at which every window is scored
/// again (beside its own position), with the views' probabilities averaged per model.
///
/// Parsed from comma-separated seconds, e.g. `-2.5,2.5`; each is finite and not 0 (the window
/// itself is always scored). How a view near a recording's edge is placed is the runner's
/// business ([`crate::runner`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Shifts(Vec<f64>);

impl Shifts {
    /// The shifts in seconds, as given.
    pub fn seconds(&self) -> &[f64] {
        &self.0
    }
}

impl fmt::Display for Shifts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(f64::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Shifts {
    type Err = PostprocessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| PostprocessError::InvalidShifts {
            given: s.to_string(),
            reason,
        };
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let v: f64 = part
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| invalid(format!("{part:?} is not a number of seconds")))?;
            if v == 0.0 {
                return Err(invalid(
                    "a shift of 0 is the window itself, which is always scored".into(),
                ));
            }
            if out.contains(&v) {
                return Err(invalid(format!("{v} is given twice")));
            }
            out.push(v);
        }
        Ok(Shifts(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-6
    }

    #[test]
    fn sigmoid_in_place_maps_every_element() {
        let mut a = array![[0.0f32, 100.0], [-100.0, 0.0]];
        sigmoid_in_place(&mut a);
        assert!(close(a[[0, 0]], 0.5) && close(a[[0, 1]], 1.0) && close(a[[1, 0]], 0.0));
    }

    #[test]
    fn ensemble_names() {
        assert_eq!("mean".parse::<Ensemble>(), Ok(Ensemble::Mean));
        assert_eq!("Rank".parse::<Ensemble>(), Ok(Ensemble::Rank));
        assert_eq!("geometric".parse::<Ensemble>(), Ok(Ensemble::Geometric));
        assert_eq!("MIN".parse::<Ensemble>(), Ok(Ensemble::Min));
        assert_eq!("power".parse::<Ensemble>(), Ok(Ensemble::Power(2.0)));
        assert_eq!("power: -1.5".parse::<Ensemble>(), Ok(Ensemble::Power(-1.5)));
        for bad in ["median", "mean:2", "power:x", "power:"] {
            let e = bad.parse::<Ensemble>().unwrap_err();
            assert!(e.to_string().contains("power:Q"), "{bad}: {e}");
        }
        for bad in ["power:0", "power:inf", "power:NaN"] {
            let e = bad.parse::<Ensemble>().unwrap_err();
            assert_eq!(e, PostprocessError::InvalidPower(bad.to_string()));
        }
        for e in [
            Ensemble::Mean,
            Ensemble::Min,
            Ensemble::Rank,
            Ensemble::Geometric,
            Ensemble::Power(3.0),
            Ensemble::Power(0.5),
        ] {
            assert_eq!(e.to_string().parse::<Ensemble>(), Ok(e));
        }
    }

    #[test]
    fn min_and_power_means() {
        let a = array![[0.2f32, 0.9], [0.0, 1.0]];
        let b = array![[0.8f32, 0.1], [0.0, 1.0]];
        let preds = [a.clone(), b.clone()];
        let min = ensemble(&preds, Ensemble::Min).unwrap();
        assert_eq!(min, array![[0.2f32, 0.1], [0.0, 1.0]]);
        // q = 2: sqrt((0.04 + 0.64) / 2) = sqrt(0.34); sqrt((0.81 + 0.01) / 2) = sqrt(0.41).
        let p2 = ensemble(&preds, Ensemble::Power(2.0)).unwrap();
        assert!(close(p2[[0, 0]], 0.34f32.sqrt()) && close(p2[[0, 1]], 0.41f32.sqrt()));
        assert!(close(p2[[1, 0]], 0.0) && close(p2[[1, 1]], 1.0));
        // q = 1 is the mean; q = -1 the harmonic mean 2 / (1/0.2 + 1/0.8) = 0.32.
        let p1 = ensemble(&preds, Ensemble::Power(1.0)).unwrap();
        let mean = ensemble(&preds, Ensemble::Mean).unwrap();
        assert!(p1.iter().zip(&mean).all(|(x, y)| close(*x, *y)));
        let h = ensemble(&preds, Ensemble::Power(-1.0)).unwrap();
        assert!(close(h[[0, 0]], 0.32), "{}", h[[0, 0]]);
        // A zero with a negative exponent: the limit, 0, not NaN.
        assert_eq!(h[[1, 0]], 0.0);
        // Large exponents approach the max and stay finite.
        let big = ensemble(&preds, Ensemble::Power(60.0)).unwrap();
        assert!(
            (big[[0, 0]] - 0.8).abs() < 0.01 && big[[0, 0]] <= 0.8,
            "{}",
            big[[0, 0]]
        );
        // One model: every method but rank returns it.
        for how in [Ensemble::Min, Ensemble::Power(3.0)] {
            let one = ensemble(std::slice::from_ref(&a), how).unwrap();
            assert!(one.iter().zip(&a).all(|(x, y)| close(*x, *y)), "{how}");
        }
    }

    #[test]
    fn file_max_multiply_and_blend() {
        // Two windows, two species; column maxima 0.8 and 0.1.
        let p = array![[0.2f32, 0.1], [0.8, 0.05]];
        let mut m = p.clone();
        file_max(&mut m, FileMax::Multiply(1.0));
        let want = [[0.16f32, 0.01], [0.64, 0.005]];
        for (r, row) in want.iter().enumerate() {
            for (c, w) in row.iter().enumerate() {
                assert!(close(m[[r, c]], *w), "multiply [{r},{c}] {}", m[[r, c]]);
            }
        }
        let mut e = p.clone();
        file_max(&mut e, FileMax::Multiply(0.5));
        assert!(close(e[[0, 0]], 0.2 * 0.8f32.sqrt()));
        let mut b = p.clone();
        file_max(&mut b, FileMax::Blend(0.25));
        // 0.75·0.2 + 0.25·0.8 = 0.35; 0.75·0.05 + 0.25·0.1 = 0.0625.
        assert!(close(b[[0, 0]], 0.35) && close(b[[1, 0]], 0.8) && close(b[[1, 1]], 0.0625));
        let mut zero = p.clone();
        file_max(&mut zero, FileMax::Blend(0.0));
        assert_eq!(zero, p);
        let mut one = p.clone();
        file_max(&mut one, FileMax::Blend(1.0));
        assert_eq!(one, array![[0.8f32, 0.1], [0.8, 0.1]]);
        let mut empty = Array2::<f32>::zeros((0, 2));
        file_max(&mut empty, FileMax::Multiply(1.0));
    }

    #[test]
    fn file_max_and_shift_parsing() {
        assert_eq!("multiply".parse::<FileMax>(), Ok(FileMax::Multiply(1.0)));
        assert_eq!(
            "Multiply:0.5".parse::<FileMax>(),
            Ok(FileMax::Multiply(0.5))
        );
        assert_eq!("blend:0.3".parse::<FileMax>(), Ok(FileMax::Blend(0.3)));
        for bad in [
            "blend",
            "blend:1.5",
            "blend:-0.1",
            "multiply:0",
            "multiply:x",
            "max",
        ] {
            let e = bad.parse::<FileMax>().unwrap_err();
            assert!(
                matches!(e, PostprocessError::InvalidFileMax { .. }) && e.to_string().contains(bad),
                "{bad}: {e}"
            );
        }
        for f in [FileMax::Multiply(2.0), FileMax::Blend(0.5)] {
            assert_eq!(f.to_string().parse::<FileMax>(), Ok(f));
        }
        let s: Shifts = "-2.5, 2.5".parse().unwrap();
        assert_eq!(s.seconds(), &[-2.5, 2.5]);
        assert_eq!(s.to_string().parse::<Shifts>(), Ok(s));
        for bad in ["", "0", "1,1", "x", "2.5,inf"] {
            let e = bad.parse::<Shifts>().unwrap_err();
            assert!(
                matches!(e, PostprocessError::InvalidShifts { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn mean_and_geometric() {
        let a = array![[0.2f32, 0.9], [0.0, 1.0]];
        let b = array![[0.8f32, 0.1], [0.0, 1.0]];
        let mean = ensemble(&[a.clone(), b.clone()], Ensemble::Mean).unwrap();
        assert!(close(mean[[0, 0]], 0.5) && close(mean[[0, 1]], 0.5));
        assert!(close(mean[[1, 0]], 0.0) && close(mean[[1, 1]], 1.0));
        let geo = ensemble(&[a, b], Ensemble::Geometric).unwrap();
        assert!(close(geo[[0, 0]], 0.4)); // sqrt(0.16)
        assert!(close(geo[[0, 1]], 0.3)); // sqrt(0.09)
        assert!(close(geo[[1, 0]], 1e-7)); // floor
        assert!(close(geo[[1, 1]], 1.0));
    }

    #[test]
    fn rank_with_ties() {
        // Column 0: values 0.1, 0.5, 0.5, 0.9 → 0-based ranks 0, 1.5, 1.5, 3 → /3.
        // Column 1: all tied → 0.5.
        let a = array![[0.1f32, 0.3], [0.5, 0.3], [0.5, 0.3], [0.9, 0.3]];
        let r = ensemble(std::slice::from_ref(&a), Ensemble::Rank).unwrap();
        let want0 = [0.0, 0.5, 0.5, 1.0];
        for (i, w) in want0.iter().enumerate() {
            assert!(close(r[[i, 0]], *w), "row {i}: {}", r[[i, 0]]);
            assert!(close(r[[i, 1]], 0.5));
        }
        // A second model reversing the order of column 0: mean of ranks.
        let b = array![[0.9f32, 0.0], [0.2, 0.1], [0.1, 0.2], [0.0, 0.3]];
        let r = ensemble(&[a, b], Ensemble::Rank).unwrap();
        // b col0 ranks: 3,2,1,0 → 1, 2/3, 1/3, 0. Mean with a: 0.5, 7/12, 5/12, 0.5.
        let want = [0.5, 7.0 / 12.0, 5.0 / 12.0, 0.5];
        for (i, w) in want.iter().enumerate() {
            assert!(close(r[[i, 0]], *w), "row {i}: {} vs {w}", r[[i, 0]]);
        }
        // b col1 ranks 0,1/3,2/3,1; mean with 0.5.
        assert!(close(r[[0, 1]], 0.25) && close(r[[3, 1]], 0.75));
        // Single row: 0.5.
        let one = ensemble(&[array![[0.7f32, 0.1]]], Ensemble::Rank).unwrap();
        assert_eq!(one, array![[0.5f32, 0.5]]);
    }

    #[test]
    fn ensemble_errors() {
        assert_eq!(
            ensemble(&[], Ensemble::Mean),
            Err(PostprocessError::NoModels)
        );
        let e = ensemble(
            &[Array2::zeros((2, 3)), Array2::zeros((2, 4))],
            Ensemble::Rank,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            PostprocessError::ShapeMismatch { index: 1, .. }
        ));
        assert!(e.to_string().contains("model 1"));
    }

    #[test]
    fn kernel_parsing() {
        let k: Kernel = "0.1, 0.2,0.4,0.2,0.1".parse().unwrap();
        assert_eq!(k.weights(), &[0.1, 0.2, 0.4, 0.2, 0.1]);
        assert_eq!(k.to_string(), "0.1,0.2,0.4,0.2,0.1");
        for bad in [
            "",
            "0.5,0.5",
            "0.1,x,0.1",
            "0.1,-0.2,0.1",
            "0,0,0",
            "1,inf,1",
        ] {
            let e = bad.parse::<Kernel>().unwrap_err();
            assert!(
                matches!(e, PostprocessError::InvalidKernel { .. }),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(Kernel::new(vec![1.0]).is_ok());
    }

    #[test]
    fn smoothing_interior_and_edges() {
        // One species, 5 windows, kernel 1,2,1 (sum 4).
        let mut p = array![[0.0f32], [4.0], [8.0], [0.0], [4.0]];
        smooth(&mut p, &[1.0, 2.0, 1.0]).unwrap();
        // Row 0: edge, weights 2 (self) + 1 (next) = 3 → (2·0 + 1·4)/3.
        // Row 1: (0 + 8 + 8)/4 = 4. Row 2: (4 + 16 + 0)/4 = 5. Row 3: (8 + 0 + 4)/4 = 3.
        // Row 4: edge, (1·0 + 2·4)/3.
        let want = [4.0 / 3.0, 4.0, 5.0, 3.0, 8.0 / 3.0];
        for (i, w) in want.iter().enumerate() {
            assert!(
                (p[[i, 0]] - w).abs() < 1e-5,
                "row {i}: {} vs {w}",
                p[[i, 0]]
            );
        }
        // A constant stays constant, edges included, with a 5-weight kernel on 3 windows.
        let mut c = Array2::from_elem((3, 2), 0.25f32);
        smooth(&mut c, &[0.1, 0.2, 0.4, 0.2, 0.1]).unwrap();
        assert!(c.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // Kernel 1,0,1 on one window: partial sum 0 → unchanged.
        let mut one = array![[0.7f32]];
        smooth(&mut one, &[1.0, 0.0, 1.0]).unwrap();
        assert_eq!(one, array![[0.7f32]]);
        // Invalid kernel leaves p alone.
        let mut q = array![[1.0f32], [2.0]];
        assert!(smooth(&mut q, &[0.5, 0.5]).is_err());
        assert_eq!(q, array![[1.0f32], [2.0]]);
        // Empty input is fine.
        let mut e = Array2::<f32>::zeros((0, 3));
        smooth(&mut e, &[1.0, 2.0, 1.0]).unwrap();
    }

    #[test]
    fn smoothing_edges_with_wide_kernel() {
        // Kernel 0.1,0.2,0.4,0.2,0.1 on 4 windows 1,0,0,0.
        let mut p = array![[1.0f32], [0.0], [0.0], [0.0]];
        smooth(&mut p, &[0.1, 0.2, 0.4, 0.2, 0.1]).unwrap();
        // Row 0 sees rows 0..2 with weights 0.4,0.2,0.1 (sum 0.7): 0.4/0.7.
        // Row 1 sees rows 0..3 with 0.2,0.4,0.2,0.1 (0.9): 0.2/0.9.
        // Row 2 sees rows 0..3 with 0.1,0.2,0.4,0.2 (0.9): 0.1/0.9.
        // Row 3 sees rows 1..3 with 0.1,0.2,0.4 (0.7): 0.
        let want = [0.4 / 0.7, 0.2 / 0.9, 0.1 / 0.9, 0.0];
        for (i, w) in want.iter().enumerate() {
            assert!(
                (p[[i, 0]] - w).abs() < 1e-6,
                "row {i}: {} vs {w}",
                p[[i, 0]]
            );
        }
    }
}

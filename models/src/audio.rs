//! Audio decoding and resampling: any supported file → mono `f32` at 32 kHz.
//!
//! Containers and codecs: Ogg Vorbis (the Kaggle BirdCLEF format), MP3, FLAC and WAV (integer PCM
//! and float), decoded by Symphonia. Channels are mixed down by their mean (as librosa's `to_mono`
//! does) and the result is resampled to [`TARGET_SAMPLE_RATE`] with a polyphase Kaiser-windowed-sinc
//! resampler ([`StreamResampler`]) whose output is aligned sample-exactly, as soxr's is.
//!
//! Decoding is streaming: [`AudioStream`] reads one packet at a time and hands out resampled chunks,
//! so memory stays bounded by a chunk whatever the file's length. [`decode_file`] collects a whole
//! file for callers that want it in memory (a 4-min soundscape is 7.7 M samples, 31 MB).
//!
//! Every failure is an [`AudioError`] whose message names the file and the cause; nothing here
//! panics on bad input.

use std::fs::File;
use std::path::{Path, PathBuf};

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// The sample rate every model input is computed at (Hz), as in all BirdCLEF competitions.
pub const TARGET_SAMPLE_RATE: u32 = 32_000;

/// Why a file could not be decoded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read file: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The file has zero bytes.
    #[error("{path}: file is empty (0 bytes)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// No supported container was recognised (not audio, or an unsupported format).
    #[error("{path}: not a recognised audio file (Ogg, MP3, FLAC, WAV): {reason}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What the prober said.
        reason: String,
    },
    /// The container holds no audio track that can be decoded.
    #[error("{path}: no decodable audio track: {reason}")]
    NoAudioTrack {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The stream ends in the middle of a page or packet: the file was cut short.
    #[error(
        "{path}: truncated: the stream breaks off after {decoded_seconds:.2} s of audio ({reason})"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Seconds of audio decoded before the break.
        decoded_seconds: f64,
        /// What the demuxer or decoder said.
        reason: String,
    },
    /// Malformed data inside the stream.
    #[error("{path}: corrupt audio data after {decoded_seconds:.2} s: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Seconds of audio decoded before the corrupt data.
        decoded_seconds: f64,
        /// What the demuxer or decoder said.
        reason: String,
    },
    /// The container parsed but holds no audio samples at all.
    #[error("{path}: contains no audio samples")]
    NoSamples {
        /// The file.
        path: PathBuf,
    },
    /// The resampler refused the conversion.
    #[error("{path}: {cause}")]
    Resample {
        /// The file.
        path: PathBuf,
        /// Why (part of the message, so not also a `source`: `{:#}` would repeat it).
        cause: ResampleError,
    },
}

/// A sample-rate conversion the resampler cannot do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot resample from {from_hz} Hz to {to_hz} Hz: {reason}")]
pub struct ResampleError {
    /// Source rate.
    pub from_hz: u32,
    /// Target rate.
    pub to_hz: u32,
    /// Why.
    pub reason: String,
}

impl AudioError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            AudioError::Io { path, .. }
            | AudioError::Empty { path }
            | AudioError::UnknownFormat { path, .. }
            | AudioError::NoAudioTrack { path, .. }
            | AudioError::Truncated { path, .. }
            | AudioError::Corrupt { path, .. }
            | AudioError::NoSamples { path }
            | AudioError::Resample { path, .. } => path,
        }
    }
}

/// What the file itself says about its audio.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Sample rate of the stored audio (Hz).
    pub sample_rate: u32,
    /// Number of channels of the stored audio.
    pub channels: usize,
    /// Codec name as Symphonia reports it (e.g. "vorbis").
    pub codec: String,
    /// Length in source frames, when the container states it.
    pub frames: Option<u64>,
}

impl SourceInfo {
    /// Duration in seconds when known.
    pub fn duration_seconds(&self) -> Option<f64> {
        self.frames
            .map(|f| f as f64 / f64::from(self.sample_rate.max(1)))
    }
}

/// A whole decoded file: mono samples at [`TARGET_SAMPLE_RATE`].
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Mono samples at 32 kHz.
    pub samples: Vec<f32>,
    /// The source's own rate, channels and codec.
    pub source: SourceInfo,
}

impl Decoded {
    /// Duration in seconds at 32 kHz.
    pub fn duration_seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(TARGET_SAMPLE_RATE)
    }
}

/// Decode a whole file to mono 32 kHz `f32`.
pub fn decode_file(path: &Path) -> Result<Decoded, AudioError> {
    let mut stream = AudioStream::open(path)?;
    let expected = stream
        .source_info()
        .frames
        .map(|f| {
            (f as f64 * f64::from(TARGET_SAMPLE_RATE) / f64::from(stream.source_info().sample_rate))
                .ceil() as usize
        })
        .unwrap_or(0);
    // Cap the up-front reservation: a lying header must not allocate gigabytes.
    let mut samples = Vec::with_capacity(expected.min(64 * 60 * TARGET_SAMPLE_RATE as usize));
    while stream.read_into(&mut samples)? {}
    if samples.is_empty() {
        return Err(AudioError::NoSamples {
            path: path.to_path_buf(),
        });
    }
    Ok(Decoded {
        samples,
        source: stream.source_info().clone(),
    })
}

/// Streaming decoder: yields mono 32 kHz chunks, one decoded packet (plus resampler latency) at a
/// time, so a file of any length is decoded in bounded memory.
pub struct AudioStream {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    info: SourceInfo,
    resampler: Option<StreamResampler>,
    planar: Vec<Vec<f32>>,
    mono: Vec<f32>,
    source_frames: u64,
    finished: bool,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("source_frames", &self.source_frames)
            .finish()
    }
}

impl AudioStream {
    /// Open a file and prepare its decoder and resampler.
    pub fn open(path: &Path) -> Result<Self, AudioError> {
        let p = || path.to_path_buf();
        let file = File::open(path).map_err(|cause| AudioError::Io { path: p(), cause })?;
        let len = file
            .metadata()
            .map_err(|cause| AudioError::Io { path: p(), cause })?
            .len();
        if len == 0 {
            return Err(AudioError::Empty { path: p() });
        }
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| match e {
                SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    AudioError::UnknownFormat {
                        path: p(),
                        reason: "no known container signature before the end of the file".into(),
                    }
                }
                other => AudioError::UnknownFormat {
                    path: p(),
                    reason: other.to_string(),
                },
            })?;
        let track =
            format
                .default_track(TrackType::Audio)
                .ok_or_else(|| AudioError::NoAudioTrack {
                    path: p(),
                    reason: "the container lists no audio track".into(),
                })?;
        let track_id = track.id;
        let frames = track.num_frames;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|c| c.audio())
            .ok_or_else(|| AudioError::NoAudioTrack {
                path: p(),
                reason: "the audio track has no codec parameters".into(),
            })?
            .clone();
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| AudioError::NoAudioTrack {
                path: p(),
                reason: format!("no decoder for codec {:?}: {e}", params.codec),
            })?;
        let sample_rate = params.sample_rate.ok_or_else(|| AudioError::NoAudioTrack {
            path: p(),
            reason: "the audio track states no sample rate".into(),
        })?;
        if sample_rate == 0 {
            return Err(AudioError::NoAudioTrack {
                path: p(),
                reason: "the audio track states a sample rate of 0 Hz".into(),
            });
        }
        let channels = params.channels.as_ref().map(|c| c.count()).unwrap_or(1);
        let codec = symphonia::default::get_codecs()
            .get_audio_decoder(params.codec)
            .map(|d| d.codec.info.short_name.to_string())
            .unwrap_or_else(|| format!("{:?}", params.codec));
        let resampler = if sample_rate == TARGET_SAMPLE_RATE {
            None
        } else {
            Some(
                StreamResampler::new(sample_rate, TARGET_SAMPLE_RATE)
                    .map_err(|cause| AudioError::Resample { path: p(), cause })?,
            )
        };
        Ok(Self {
            path: p(),
            format,
            decoder,
            track_id,
            info: SourceInfo {
                sample_rate,
                channels,
                codec,
                frames,
            },
            resampler,
            planar: Vec::new(),
            mono: Vec::new(),
            source_frames: 0,
            finished: false,
        })
    }

    /// Rate, channels, codec and stated length of the source.
    pub fn source_info(&self) -> &SourceInfo {
        &self.info
    }

    /// The file being decoded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn decoded_seconds(&self) -> f64 {
        self.source_frames as f64 / f64::from(self.info.sample_rate)
    }

    /// The next chunk of mono 32 kHz samples, `Ok(None)` once the stream is exhausted.
    /// A returned chunk may be empty while the resampler fills its first block.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>, AudioError> {
        let mut chunk = Vec::new();
        Ok(self.read_into(&mut chunk)?.then_some(chunk))
    }

    /// Decode the next packet and append its mono 32 kHz samples to `out` (possibly none, while
    /// the resampler fills). Returns `Ok(false)` once the stream is exhausted.
    pub fn read_into(&mut self, out: &mut Vec<f32>) -> Result<bool, AudioError> {
        if self.finished {
            return Ok(false);
        }
        loop {
            let packet = match self.format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return self.finish(out),
                Err(e) => return Err(self.stream_error(e)),
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let frames = match self.decoder.decode(&packet) {
                Ok(buf) => {
                    if buf.frames() == 0 {
                        continue;
                    }
                    buf.copy_to_vecs_planar::<f32>(&mut self.planar);
                    buf.frames()
                }
                Err(e) => return Err(self.stream_error(e)),
            };
            self.source_frames += frames as u64;
            match self.resampler.as_mut() {
                None => mix_to_mono_into(&self.planar, out),
                Some(r) => {
                    self.mono.clear();
                    mix_to_mono_into(&self.planar, &mut self.mono);
                    r.push(&self.mono, out);
                }
            }
            return Ok(true);
        }
    }

    fn finish(&mut self, out: &mut Vec<f32>) -> Result<bool, AudioError> {
        self.finished = true;
        if self.source_frames == 0 {
            return Err(AudioError::NoSamples {
                path: self.path.clone(),
            });
        }
        if let Some(r) = self.resampler.as_mut() {
            r.flush(out);
        }
        Ok(true)
    }

    /// A demuxer or decoder error: an unexpected end of file is truncation, anything else
    /// corruption. The stream ends either way.
    fn stream_error(&mut self, e: SymError) -> AudioError {
        self.finished = true;
        match e {
            SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                AudioError::Truncated {
                    path: self.path.clone(),
                    decoded_seconds: self.decoded_seconds(),
                    reason: io.to_string(),
                }
            }
            other => self.corrupt(other),
        }
    }

    fn corrupt(&self, e: SymError) -> AudioError {
        AudioError::Corrupt {
            path: self.path.clone(),
            decoded_seconds: self.decoded_seconds(),
            reason: e.to_string(),
        }
    }
}

/// Append the mean over channels (librosa's `to_mono`) to `out`.
fn mix_to_mono_into(planar: &[Vec<f32>], out: &mut Vec<f32>) {
    match planar {
        [] => {}
        [only] => out.extend_from_slice(only),
        [first, rest @ ..] => {
            let start = out.len();
            out.extend_from_slice(first);
            let mixed = &mut out[start..];
            for ch in rest {
                for (o, s) in mixed.iter_mut().zip(ch) {
                    *o += *s;
                }
            }
            let scale = 1.0 / planar.len() as f32;
            mixed.iter_mut().for_each(|o| *o *= scale);
        }
    }
}

/// Zero crossings of the interpolation kernel on each side (at the lower of the two rates).
const SINC_ZEROS: f64 = 40.0;
/// Pass band edge as a fraction of the lower Nyquist frequency.
const SINC_ROLLOFF: f64 = 0.955;
/// Kaiser window shape (about 100 dB stop-band attenuation).
const KAISER_BETA: f64 = 10.0;

/// Streaming polyphase resampler for rational ratios (band-limited interpolation with a
/// Kaiser-windowed sinc). Output sample `k` sits exactly at input time `k * from / to`, like
/// soxr's and librosa's output, and the total output is `ceil(n_in * to / from)` samples.
/// The signal is taken as zero before its start and after its end.
pub struct StreamResampler {
    /// Output rate / input rate = `up / down` in lowest terms.
    up: usize,
    down: usize,
    /// Taps per phase (`2 * half`); output `k` reads inputs `n - half + 1 ..= n + half`.
    half: usize,
    /// `up` phases of `2 * half` coefficients each.
    table: Vec<f32>,
    /// Input history: `buf[0]` is input sample `buf_start` (may be negative: leading zeros).
    buf: Vec<f32>,
    buf_start: i64,
    in_total: u64,
    out_total: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("up", &self.up)
            .field("down", &self.down)
            .field("taps", &(2 * self.half))
            .field("in_total", &self.in_total)
            .field("out_total", &self.out_total)
            .finish()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..200 {
        term *= q / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

impl StreamResampler {
    /// A resampler from `from_hz` to `to_hz`, one channel.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ResampleError> {
        let fail = |reason: String| {
            Err(ResampleError {
                from_hz,
                to_hz,
                reason,
            })
        };
        if from_hz == 0 || to_hz == 0 {
            return fail("sample rates must be positive".into());
        }
        let g = gcd(from_hz as usize, to_hz as usize);
        let (up, down) = (to_hz as usize / g, from_hz as usize / g);
        if up > 1 << 16 {
            return fail(format!(
                "it needs {up} filter phases; rates this unrelated are not supported"
            ));
        }
        // Cut-off in cycles per input sample, below the lower Nyquist frequency.
        let fc = 0.5 * (up as f64 / down as f64).min(1.0) * SINC_ROLLOFF;
        let half_width = SINC_ZEROS / (2.0 * fc);
        // Taps past half_width get zero weight; rounding up to a multiple of 8 taps lets the dot
        // product run in whole 8-lane blocks.
        let half = (half_width.ceil() as usize).next_multiple_of(4);
        let taps = 2 * half;
        let i0_beta = bessel_i0(KAISER_BETA);
        let mut table = vec![0.0f32; up * taps];
        for p in 0..up {
            let frac = p as f64 / up as f64;
            for (j, c) in table[p * taps..(p + 1) * taps].iter_mut().enumerate() {
                // Input n - half + 1 + j sits tau samples from the output instant.
                let tau = (j as f64 - half as f64 + 1.0) - frac;
                let r = tau / half_width;
                if r.abs() >= 1.0 {
                    continue;
                }
                let x = 2.0 * fc * tau;
                let sinc = if x == 0.0 {
                    1.0
                } else {
                    (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                };
                let window = bessel_i0(KAISER_BETA * (1.0 - r * r).sqrt()) / i0_beta;
                *c = (2.0 * fc * sinc * window) as f32;
            }
        }
        Ok(Self {
            up,
            down,
            half,
            table,
            buf: vec![0.0; half],
            buf_start: -(half as i64),
            in_total: 0,
            out_total: 0,
        })
    }

    /// Output samples the first `n_in` inputs give in total.
    fn target_len(&self, n_in: u64) -> u64 {
        (n_in * self.up as u64).div_ceil(self.down as u64)
    }

    /// Produce every output whose kernel lies inside the buffered input (with AVX2 code where
    /// the CPU has it: the same arithmetic in the same order).
    fn drain_ready(&mut self, out: &mut Vec<f32>, limit: u64) {
        #[cfg(target_arch = "x86_64")]
        if crate::dsp::has_avx2() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU supports AVX2 (checked at run time just above).
            return unsafe { self.drain_ready_avx2(out, limit) };
        }
        self.drain_ready_body(out, limit);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn drain_ready_avx2(&mut self, out: &mut Vec<f32>, limit: u64) {
        self.drain_ready_body(out, limit);
    }

    #[inline(always)]
    fn drain_ready_body(&mut self, out: &mut Vec<f32>, limit: u64) {
        let taps = 2 * self.half;
        let buf_end = self.buf_start + self.buf.len() as i64;
        while self.out_total < limit {
            let pos = self.out_total * self.down as u64;
            let n = (pos / self.up as u64) as i64;
            let phase = (pos % self.up as u64) as usize;
            let first = n - self.half as i64 + 1;
            if first + taps as i64 > buf_end {
                break;
            }
            let lo = (first - self.buf_start) as usize;
            let x = &self.buf[lo..lo + taps];
            let h = &self.table[phase * taps..(phase + 1) * taps];
            out.push(crate::dsp::dot(x, h));
            self.out_total += 1;
        }
        // Forget input no later output can reach.
        let pos = self.out_total * self.down as u64;
        let next_first = (pos / self.up as u64) as i64 - self.half as i64 + 1;
        let drop = (next_first - self.buf_start).clamp(0, self.buf.len() as i64) as usize;
        if drop > 0 && drop * 2 >= self.buf.len() {
            self.buf.drain(..drop);
            self.buf_start += drop as i64;
        }
    }

    /// Feed input samples; appends whatever output is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.buf.extend_from_slice(input);
        self.in_total += input.len() as u64;
        let limit = self.target_len(self.in_total);
        self.drain_ready(out, limit);
    }

    /// End of input: appends the remaining outputs, reading zeros past the end of the signal.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        self.buf.extend(std::iter::repeat_n(0.0, 2 * self.half + 1));
        let limit = self.target_len(self.in_total);
        self.drain_ready(out, limit);
    }
}

/// Resample a whole mono signal (convenience over [`StreamResampler`]).
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, ResampleError> {
    if from_hz == to_hz {
        return Ok(samples.to_vec());
    }
    let mut r = StreamResampler::new(from_hz, to_hz)?;
    let mut out = Vec::with_capacity(r.target_len(samples.len() as u64) as usize);
    r.push(samples, &mut out);
    r.flush(&mut out);
    Ok(out)
}

/// Write mono 32-bit float WAV (used by the demo and by tests that synthesise audio).
/// Written to a temporary file beside `path` and renamed, so a reader never sees half a file.
pub fn write_wav_f32(
    path: &Path,
    samples: &[f32],
    sample_rate: u32,
) -> Result<(), crate::fsio::OutputError> {
    let data_len = u32::try_from(samples.len() * 4).map_err(|_| crate::fsio::OutputError::Io {
        path: path.to_path_buf(),
        cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "WAV data over 4 GiB"),
    })?;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 4);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&sample_rate.to_le_bytes());
    bytes.extend_from_slice(&(sample_rate * 4).to_le_bytes());
    bytes.extend_from_slice(&4u16.to_le_bytes());
    bytes.extend_from_slice(&32u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    crate::fsio::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn resampled_length_is_ceil_of_ratio() {
        for (from, n) in [
            (48_000u32, 48_000usize),
            (44_100, 12_345),
            (22_050, 7),
            (16_000, 1),
        ] {
            let x = vec![0.1f32; n];
            let y = resample(&x, from, 32_000).expect("resample");
            let want = (n as f64 * 32_000.0 / f64::from(from)).ceil() as usize;
            assert_eq!(y.len(), want, "from {from} Hz, {n} samples");
        }
    }

    #[test]
    fn streaming_equals_whole_signal() {
        let x = sine(1000.0, 44_100, 1.3);
        let whole = resample(&x, 44_100, 32_000).expect("whole");
        let mut r = StreamResampler::new(44_100, 32_000).expect("new");
        let mut streamed = Vec::new();
        for chunk in x.chunks(777) {
            r.push(chunk, &mut streamed);
        }
        r.flush(&mut streamed);
        assert_eq!(whole.len(), streamed.len());
        let max = whole
            .iter()
            .zip(&streamed)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-6, "streamed differs by {max}");
    }

    #[test]
    fn vector_width_does_not_change_a_resampled_value() {
        // push picks AVX2 code where the CPU has it; the portable body must agree bit for bit.
        let x = sine(1000.0, 48_000, 0.5);
        let mut a = StreamResampler::new(48_000, 32_000).expect("new");
        let mut b = StreamResampler::new(48_000, 32_000).expect("new");
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        a.push(&x, &mut out_a);
        b.buf.extend_from_slice(&x);
        b.in_total += x.len() as u64;
        let limit = b.target_len(b.in_total);
        b.drain_ready_body(&mut out_b, limit);
        assert!(!out_a.is_empty());
        assert!(out_a
            .iter()
            .map(|v| v.to_bits())
            .eq(out_b.iter().map(|v| v.to_bits())));
    }

    #[test]
    fn resampled_sine_keeps_frequency_and_phase() {
        // A 1 kHz sine at 48 kHz must come out as the same 1 kHz sine at 32 kHz, aligned in time.
        let x = sine(1000.0, 48_000, 1.0);
        let y = resample(&x, 48_000, 32_000).expect("resample");
        let want = sine(1000.0, 32_000, 1.0);
        let mid = &y[2000..30_000];
        let err = mid
            .iter()
            .zip(&want[2000..30_000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-3, "max error {err}");
    }

    #[test]
    fn mono_mixdown_is_the_mean() {
        let mut m = vec![9.0];
        mix_to_mono_into(&[vec![1.0, 0.0], vec![0.0, 1.0], vec![2.0, 2.0]], &mut m);
        assert_eq!(m, vec![9.0, 1.0, 1.0]);
    }
}

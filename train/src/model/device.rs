//! Choosing the compute device: parsing `--device`, probing CUDA, and explaining why it is missing.
//!
//! Parsing and the choice itself are pure ([`DeviceRequest::from_str`], [`choose`]) so they can be
//! unit-tested without libtorch; [`CudaProbe::detect`] is the only part that asks libtorch and the
//! operating system.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// CUDA device 0 when CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device; `cuda` means index 0.
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => {
                let index = s.strip_prefix("cuda:").ok_or_else(|| {
                    format!("unknown device `{s}`: expected auto, cpu, cuda or cuda:N")
                })?;
                index.parse::<usize>().map(Self::Cuda).map_err(|_| {
                    format!("bad CUDA device index in `{s}`: expected cuda:N with N = 0, 1, ...")
                })
            }
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The device that was chosen, independent of tch so that [`choose`] stays testable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The CPU.
    Cpu,
    /// CUDA device with this index.
    Cuda(usize),
}

impl Chosen {
    /// The tch device.
    pub fn to_tch(self) -> tch::Device {
        match self {
            Self::Cpu => tch::Device::Cpu,
            Self::Cuda(i) => tch::Device::Cuda(i),
        }
    }
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// What is known about CUDA in this process.
#[derive(Debug, Clone, Default)]
pub struct CudaProbe {
    /// `tch::Cuda::is_available()`.
    pub available: bool,
    /// `tch::Cuda::device_count()`.
    pub device_count: usize,
    /// `tch::Cuda::cudnn_is_available()`.
    pub cudnn: bool,
    /// Where libtorch_cpu.so was loaded from (from /proc/self/maps), if found.
    pub torch_cpu_path: Option<PathBuf>,
    /// Where libtorch_cuda.so was loaded from, if it was loaded at all.
    pub torch_cuda_path: Option<PathBuf>,
    /// Where the NVIDIA driver library libcuda.so was loaded from, if it was.
    pub libcuda_path: Option<PathBuf>,
    /// Whether /proc/driver/nvidia/version exists (the kernel driver is loaded).
    pub kernel_driver: bool,
    /// The value of CUDA_VISIBLE_DEVICES, if set.
    pub cuda_visible_devices: Option<String>,
}

impl CudaProbe {
    /// Ask libtorch and the OS. Calls into libtorch, so it is not cheap; call it once.
    pub fn detect() -> Self {
        let available = tch::Cuda::is_available();
        let device_count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let cudnn = available && tch::Cuda::cudnn_is_available();
        // Read the maps after the calls above: the CUDA runtime opens libcuda lazily.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        Self {
            available,
            device_count,
            cudnn,
            torch_cpu_path: mapped_library(&maps, "libtorch_cpu.so"),
            torch_cuda_path: mapped_library(&maps, "libtorch_cuda.so"),
            libcuda_path: mapped_library(&maps, "libcuda.so"),
            kernel_driver: std::path::Path::new("/proc/driver/nvidia/version").exists(),
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        }
    }

    /// Likely reasons why CUDA is not usable, most fundamental first; empty when it is usable.
    pub fn reasons_unavailable(&self) -> Vec<String> {
        if self.available && self.device_count > 0 {
            return Vec::new();
        }
        let mut reasons = Vec::new();
        if self.torch_cuda_path.is_none() {
            reasons.push(
                "libtorch_cuda.so is not loaded in this process: the binary was built against a \
                 CPU-only libtorch, or the link dropped it (see train/build.rs), or LD_LIBRARY_PATH \
                 points at a CPU-only torch/lib"
                    .to_string(),
            );
        }
        if !self.kernel_driver {
            reasons.push(
                "no NVIDIA kernel driver (/proc/driver/nvidia/version is missing): this machine has \
                 no usable GPU, or it is not passed into this container"
                    .to_string(),
            );
        }
        if self.libcuda_path.is_none() {
            reasons.push(
                "the NVIDIA driver library libcuda.so.1 was not loaded (not installed, or not on the \
                 loader path)"
                    .to_string(),
            );
        }
        if let Some(v) = &self.cuda_visible_devices {
            let v = v.trim();
            if v.is_empty() || v == "-1" || v.eq_ignore_ascii_case("none") {
                reasons.push(format!("CUDA_VISIBLE_DEVICES={v:?} hides every GPU"));
            }
        }
        if reasons.is_empty() {
            reasons.push(format!(
                "libtorch reports {} CUDA device(s) although libtorch_cuda and the driver are \
                 loaded; check that the driver supports the CUDA version libtorch was built for \
                 (run nvidia-smi)",
                self.device_count
            ));
        }
        reasons
    }
}

/// Why a device request cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// CUDA was requested but is not available.
    CudaUnavailable {
        /// The request, e.g. `cuda:0`.
        requested: DeviceRequest,
        /// Likely causes, from [`CudaProbe::reasons_unavailable`].
        reasons: Vec<String>,
    },
    /// The CUDA index is beyond the number of devices.
    NoSuchDevice {
        /// The requested index.
        index: usize,
        /// How many devices there are.
        count: usize,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CudaUnavailable { requested, reasons } => {
                write!(
                    f,
                    "--device {requested} was requested but CUDA is not available"
                )?;
                if !reasons.is_empty() {
                    write!(f, "; likely because:")?;
                    for r in reasons {
                        write!(f, "\n  - {r}")?;
                    }
                }
                write!(
                    f,
                    "\n(run `birdclef-train doctor` for details, or use --device cpu)"
                )
            }
            Self::NoSuchDevice { index, count } => write!(
                f,
                "--device cuda:{index} was requested but only {count} CUDA device(s) are visible \
                 (valid: cuda:0..cuda:{})",
                count.saturating_sub(1)
            ),
        }
    }
}

impl std::error::Error for DeviceError {}

/// Pick the device for `request` given what `probe` found. Pure: no libtorch calls.
pub fn choose(request: DeviceRequest, probe: &CudaProbe) -> Result<Chosen, DeviceError> {
    let usable = probe.available && probe.device_count > 0;
    match request {
        DeviceRequest::Cpu => Ok(Chosen::Cpu),
        DeviceRequest::Auto if usable => Ok(Chosen::Cuda(0)),
        DeviceRequest::Auto => Ok(Chosen::Cpu),
        DeviceRequest::Cuda(_) if !usable => Err(DeviceError::CudaUnavailable {
            requested: request,
            reasons: probe.reasons_unavailable(),
        }),
        DeviceRequest::Cuda(index) if index >= probe.device_count => {
            Err(DeviceError::NoSuchDevice {
                index,
                count: probe.device_count,
            })
        }
        DeviceRequest::Cuda(index) => Ok(Chosen::Cuda(index)),
    }
}

/// The path of the first mapped file in `maps` (the text of /proc/self/maps) whose file name
/// starts with `name` (so `libcuda.so` matches `libcuda.so.1` and `libcuda.so.550.54`).
fn mapped_library(maps: &str, name: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|file| file.starts_with(name))
        })
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(count: usize) -> CudaProbe {
        CudaProbe {
            available: true,
            device_count: count,
            cudnn: true,
            ..CudaProbe::default()
        }
    }

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("CPU".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:0".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda(3)));
        assert_eq!(" cuda:1 ".parse(), Ok(DeviceRequest::Cuda(1)));
    }

    #[test]
    fn rejects_bad_device_names() {
        for bad in [
            "", "tpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1:2", "cuda0", "mps",
        ] {
            let err = bad.parse::<DeviceRequest>().expect_err(bad);
            assert!(err.contains("device"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for r in [
            DeviceRequest::Auto,
            DeviceRequest::Cpu,
            DeviceRequest::Cuda(2),
        ] {
            assert_eq!(r.to_string().parse(), Ok(r));
        }
    }

    #[test]
    fn auto_prefers_cuda_when_available() {
        assert_eq!(choose(DeviceRequest::Auto, &gpu(2)), Ok(Chosen::Cuda(0)));
        assert_eq!(
            choose(DeviceRequest::Auto, &CudaProbe::default()),
            Ok(Chosen::Cpu)
        );
        // available but zero devices counts as unavailable
        assert_eq!(choose(DeviceRequest::Auto, &gpu(0)), Ok(Chosen::Cpu));
    }

    #[test]
    fn cpu_is_always_allowed() {
        assert_eq!(choose(DeviceRequest::Cpu, &gpu(1)), Ok(Chosen::Cpu));
        assert_eq!(
            choose(DeviceRequest::Cpu, &CudaProbe::default()),
            Ok(Chosen::Cpu)
        );
    }

    #[test]
    fn cuda_without_cuda_fails_with_reasons() {
        let err = choose(DeviceRequest::Cuda(0), &CudaProbe::default()).expect_err("no cuda");
        let msg = err.to_string();
        assert!(msg.contains("CUDA is not available"), "{msg}");
        assert!(msg.contains("libtorch_cuda"), "{msg}");
        assert!(msg.contains("driver"), "{msg}");
    }

    #[test]
    fn cuda_index_out_of_range_fails() {
        assert_eq!(
            choose(DeviceRequest::Cuda(2), &gpu(2)),
            Err(DeviceError::NoSuchDevice { index: 2, count: 2 })
        );
        assert_eq!(choose(DeviceRequest::Cuda(1), &gpu(2)), Ok(Chosen::Cuda(1)));
    }

    #[test]
    fn hidden_devices_are_reported() {
        let probe = CudaProbe {
            cuda_visible_devices: Some(String::new()),
            ..CudaProbe::default()
        };
        assert!(probe
            .reasons_unavailable()
            .iter()
            .any(|r| r.contains("CUDA_VISIBLE_DEVICES")));
        assert!(gpu(1).reasons_unavailable().is_empty());
    }

    #[test]
    fn finds_mapped_libraries() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 123 /opt/torch/lib/libtorch_cpu.so
7f0000001000-7f0000002000 r-xp 00001000 08:01 124 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
7f0000003000-7f0000004000 rw-p 00000000 00:00 0
7f0000005000-7f0000006000 rw-p 00000000 00:00 0 [heap]
";
        assert_eq!(
            mapped_library(maps, "libtorch_cpu.so"),
            Some(PathBuf::from("/opt/torch/lib/libtorch_cpu.so"))
        );
        assert_eq!(
            mapped_library(maps, "libcuda.so"),
            Some(PathBuf::from(
                "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"
            ))
        );
        assert_eq!(mapped_library(maps, "libtorch_cuda.so"), None);
    }
}

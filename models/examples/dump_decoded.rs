//! Decode a file to mono 32 kHz and save it as .npy (for comparing with Python pipelines).
//! `cargo run -p birdclef-models --example dump_decoded -- IN OUT.npy`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        return Err("usage: dump_decoded IN OUT.npy".into());
    };
    let d = birdclef_models::audio::decode_file(std::path::Path::new(input))?;
    let n = d.samples.len();
    let arr = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), d.samples)?;
    birdclef_models::npy::write_f32(std::path::Path::new(output), &arr)?;
    Ok(())
}

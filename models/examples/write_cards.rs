//! Regenerates the reference frontend cards in models/cards/ from the Rust presets.
//! `cargo run -p birdclef-models --example write_cards`
use birdclef_models::card::Card;
use birdclef_models::frontend::FrontendConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cards");
    std::fs::create_dir_all(&dir)?;
    for (name, cfg) in [
        ("nvbird224", FrontendConfig::nvbird224()),
        ("kefir128", FrontendConfig::kefir128()),
    ] {
        let mut card = Card::frontend_only(name, cfg);
        card.provenance.notes = Some(format!(
            "reference frontend {name} (see ../shared/GUIDE.md section 4); labels and architecture \
             are filled in by training"
        ));
        let path = dir.join(format!("{name}.card.json"));
        card.save(&path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

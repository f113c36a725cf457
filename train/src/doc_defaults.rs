//! Test support: configuration defaults are written twice, in each field's doc comment and in the
//! `Default` impl; the tests of [`crate::config`] and [`crate::pipeline`] tie the two together by
//! reading the doc comments of the source file.

/// The documented default of every field of the structs in `src`, as its doc comment says it:
/// (struct, field, the text after the last `Default` of the comment, up to the final period).
/// Panics on a field without one, except in structs named `*Config` that only group sections.
pub fn documented_defaults(src: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut doc = String::new();
    for line in src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            current = rest.split_whitespace().next().map(str::to_string);
            doc.clear();
        } else if let Some(d) = t.strip_prefix("///") {
            doc.push(' ');
            doc.push_str(d.trim());
        } else if let (Some(st), Some(field)) = (&current, t.strip_prefix("pub ")) {
            if let Some((name, _)) = field.split_once(':') {
                if let Some(pos) = doc.rfind("Default") {
                    let text = doc[pos + "Default".len()..]
                        .trim_start_matches(':')
                        .trim()
                        .trim_end_matches('.')
                        .to_string();
                    out.push((st.clone(), name.to_string(), text));
                } else if st != "TrainConfig" && st != "PipelineConfig" {
                    panic!("{st}.{name}: its doc comment states no default");
                }
            }
            doc.clear();
        } else if t.is_empty() || t.starts_with('}') || t.starts_with("impl") {
            doc.clear();
            if t.starts_with("impl") {
                current = None;
            }
        }
    }
    out
}

/// Whether the documented `text` says what the `Default` impl gives (`value`, as TOML; `None`
/// when the field is an unset option).
pub fn agrees(text: &str, value: Option<&toml::Value>) -> bool {
    let text = text.trim_matches('`');
    let word = text.split([' ', '(']).next().unwrap_or("");
    let num = |w: &str| w.trim_matches('`').parse::<f64>().ok();
    match value {
        None => ["none", "off", "empty", "the card", "the built-in", "fresh"]
            .iter()
            .any(|w| text.starts_with(w)),
        Some(toml::Value::Boolean(b)) => word == b.to_string(),
        Some(toml::Value::Integer(i)) => num(word) == Some(*i as f64),
        Some(toml::Value::Float(f)) => {
            num(word).is_some_and(|w| (w - f).abs() <= 1e-12 * f.abs().max(1.0))
        }
        Some(toml::Value::String(s)) => word.trim_matches('`') == s,
        Some(toml::Value::Array(a)) if a.is_empty() => text.starts_with("empty") || text == "[]",
        Some(toml::Value::Table(t)) if t.is_empty() => text.starts_with("empty"),
        Some(toml::Value::Array(a)) => {
            let inner = text.trim_start_matches('[').split(']').next().unwrap_or("");
            let items: Vec<Option<f64>> = inner.split(',').map(|v| num(v.trim())).collect();
            items.len() == a.len()
                && items.iter().zip(a).all(|(d, v)| match v {
                    toml::Value::Integer(i) => *d == Some(*i as f64),
                    toml::Value::Float(f) => *d == Some(*f),
                    _ => false,
                })
        }
        Some(_) => false,
    }
}

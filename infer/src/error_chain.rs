//! An error and its causes on one line, as `anyhow`'s `{:#}` prints them.
//!
//! The errors of this crate put a wrapped cause in [`std::error::Error::source`], not in their
//! own message, so a binary printing `{:#}` shows each message once. Where the library itself
//! turns an error into text (a warning, a failure reason) it uses [`error_chain`], so that the
//! causes are not lost.
use std::error::Error;

/// `e`'s message followed by those of its sources, each after `": "`.
pub fn error_chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_source_is_appended_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}

//! The `metadata_props` of an ONNX file, read from its protobuf bytes without an inference
//! engine: OpenVINO's C API does not expose them, and the model card lives there.
//!
//! Only the top level of `ModelProto` is walked: field 14 is `repeated StringStringEntryProto
//! metadata_props` (`key` = 1, `value` = 2); every other field is skipped by its wire type, so
//! the graph and its weights are never parsed.

/// Why the metadata could not be read: the bytes are not a well-formed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ONNX model: {0}")]
pub struct MetaError(String);

/// `ModelProto.metadata_props`.
const METADATA_PROPS: u64 = 14;

/// One protobuf field: its number and, when length-delimited, its bytes.
type Field<'a> = (u64, Option<&'a [u8]>);

/// A cursor over protobuf bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, MetaError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| MetaError(format!("truncated varint at byte {}", self.at)))?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MetaError(format!("varint too long at byte {}", self.at)))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], MetaError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                MetaError(format!(
                    "a field of {n} bytes at byte {} runs past the end ({} bytes)",
                    self.at,
                    self.bytes.len()
                ))
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next field: its number and, for length-delimited fields, its bytes.
    fn field(&mut self) -> Result<Option<Field<'a>>, MetaError> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(MetaError(format!("field number 0 at byte {}", self.at)));
        }
        let payload = match wire {
            0 => {
                self.varint()?;
                None
            }
            1 => {
                self.take(8)?;
                None
            }
            2 => {
                let n = self.varint()?;
                Some(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                None
            }
            other => {
                return Err(MetaError(format!(
                    "wire type {other} (field {number}) at byte {}",
                    self.at
                )))
            }
        };
        Ok(Some((number, payload)))
    }
}

/// Every `(key, value)` of the model's `metadata_props`, in file order.
///
/// # Errors
///
/// [`MetaError`] when the bytes are not a well-formed protobuf message, or an entry's key or
/// value is not UTF-8.
pub fn metadata_props(onnx: &[u8]) -> Result<Vec<(String, String)>, MetaError> {
    let mut top = Reader { bytes: onnx, at: 0 };
    let mut props = Vec::new();
    while let Some((number, payload)) = top.field()? {
        let (METADATA_PROPS, Some(entry)) = (number, payload) else {
            continue;
        };
        let mut inner = Reader {
            bytes: entry,
            at: 0,
        };
        let (mut key, mut value) = (String::new(), String::new());
        while let Some((n, p)) = inner.field()? {
            let text = |b: &[u8]| {
                String::from_utf8(b.to_vec())
                    .map_err(|_| MetaError("a metadata entry is not UTF-8".into()))
            };
            match (n, p) {
                (1, Some(b)) => key = text(b)?,
                (2, Some(b)) => value = text(b)?,
                _ => {}
            }
        }
        props.push((key, value));
    }
    Ok(props)
}

/// The value of `key` in the model's `metadata_props` (the last one when repeated).
///
/// # Errors
///
/// As [`metadata_props`].
pub fn metadata_value(onnx: &[u8], key: &str) -> Result<Option<String>, MetaError> {
    Ok(metadata_props(onnx)?
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn entry(key: &str, value: &str) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, key.as_bytes(), &mut e);
        bytes_field(2, value.as_bytes(), &mut e);
        e
    }

    #[test]
    fn entries_are_found_among_other_fields_of_every_wire_type() {
        let mut m = Vec::new();
        varint(1 << 3, &mut m); // ir_version = 8 (varint)
        varint(8, &mut m);
        bytes_field(2, b"birdclef-export", &mut m); // producer_name
        varint(7 << 3 | 2, &mut m); // a graph of 300 bytes: a long length varint
        varint(300, &mut m);
        m.extend(std::iter::repeat_n(0xffu8, 300));
        varint(20 << 3 | 5, &mut m); // a fixed32 and a fixed64 field
        m.extend([1, 2, 3, 4]);
        varint(21 << 3 | 1, &mut m);
        m.extend([0; 8]);
        bytes_field(14, &entry("a", "1"), &mut m);
        bytes_field(14, &entry("birdclef_card", "{\"é\":2}"), &mut m);
        bytes_field(14, &entry("a", "3"), &mut m);
        assert_eq!(
            metadata_props(&m).expect("parse"),
            vec![
                ("a".into(), "1".into()),
                ("birdclef_card".into(), "{\"é\":2}".into()),
                ("a".into(), "3".into())
            ]
        );
        assert_eq!(metadata_value(&m, "a").expect("parse"), Some("3".into()));
        assert_eq!(metadata_value(&m, "b").expect("parse"), None);
        assert_eq!(metadata_props(&[]).expect("empty"), vec![]);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let mut m = Vec::new();
        bytes_field(14, &entry("k", "v"), &mut m);
        for cut in 1..m.len() {
            assert!(metadata_props(&m[..cut]).is_err(), "cut at {cut}");
        }
        let e = metadata_props(b"not an onnx model").expect_err("text");
        assert!(e.to_string().starts_with("not an ONNX model: "), "{e}");
        assert!(metadata_props(&[0x80; 11]).is_err());
        assert!(metadata_props(&[3 << 3 | 3]).is_err(), "group wire type");
        let mut huge = Vec::new();
        varint(7 << 3 | 2, &mut huge);
        varint(u64::MAX, &mut huge);
        assert!(metadata_props(&huge).is_err());
    }
}

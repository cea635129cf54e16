//! `Range` request header handling for the file API, on top of the `http-range-header` parser.
//!
//! One range per request: a harvester never asks for more, and a multipart answer would be a surprise to
//! every client we have. Malformed headers are refused with 400 rather than answered with the whole file
//! (RFC 9110 allows ignoring them, but a 100 GiB body by surprise is never what the client wanted).

use std::ops::Range;

use http_range_header::RangeUnsatisfiableError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed Range header: {0}")]
    Malformed(String),
    #[error("only one range per request is supported")]
    Multiple,
    #[error("range not satisfiable")]
    Unsatisfiable,
}

/// Resolves the header against the file size: `Ok(None)` means the whole file (no Range header),
/// `Ok(Some(r))` a non-empty range within the file, end clamped to EOF.
pub fn resolve(header: Option<&str>, size: u64) -> Result<Option<Range<u64>>, RangeError> {
    let Some(value) = header else { return Ok(None) };
    let parsed = http_range_header::parse_range_header(value).map_err(|e| match e {
        RangeUnsatisfiableError::Unsatisfiable => RangeError::Unsatisfiable,
        other => RangeError::Malformed(other.to_string()),
    })?;
    if parsed.len() != 1 {
        return Err(RangeError::Multiple);
    }
    let ranges = parsed.validate(size).map_err(|e| match e {
        RangeUnsatisfiableError::Unsatisfiable => RangeError::Unsatisfiable,
        other => RangeError::Malformed(other.to_string()),
    })?;
    match ranges.as_slice() {
        [r] => Ok(Some(*r.start()..r.end().saturating_add(1))),
        // An empty file has no satisfiable byte range.
        _ => Err(RangeError::Unsatisfiable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        assert_eq!(resolve(None, 10), Ok(None));
        assert_eq!(resolve(Some("bytes=0-4"), 10), Ok(Some(0..5)));
        assert_eq!(resolve(Some("bytes=5-"), 10), Ok(Some(5..10)));
        assert_eq!(resolve(Some("bytes=-3"), 10), Ok(Some(7..10)));
        assert_eq!(resolve(Some("bytes=-30"), 10), Ok(Some(0..10)));
        assert_eq!(resolve(Some("bytes=8-100"), 10), Ok(Some(8..10)));
        assert_eq!(
            resolve(Some("bytes=10-"), 10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            resolve(Some("bytes=10-20"), 10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            resolve(Some("bytes=0-0"), 0),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            resolve(Some("bytes=0-1,3-4"), 10),
            Err(RangeError::Multiple)
        );
        assert!(matches!(
            resolve(Some("bytes=5-1"), 10),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            resolve(Some("items=0-1"), 10),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            resolve(Some("bytes=a-b"), 10),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            resolve(Some("bytes=-"), 10),
            Err(RangeError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(s in "\\PC{0,40}", size in 0u64..1<<40) {
            if let Ok(Some(r)) = resolve(Some(&s), size) {
                prop_assert!(r.start < r.end && r.end <= size);
            }
        }

        #[test]
        fn indexed_ranges_clamp(size in 1u64..1<<40, a in 0u64..1<<41, len in 0u64..1<<30) {
            let b = a.saturating_add(len);
            let r = resolve(Some(&format!("bytes={a}-{b}")), size);
            if a >= size {
                prop_assert_eq!(r, Err(RangeError::Unsatisfiable));
            } else {
                prop_assert_eq!(r, Ok(Some(a..(b + 1).min(size))));
            }
        }

        #[test]
        fn suffix_ranges(size in 1u64..1<<40, n in 1u64..1<<41) {
            prop_assert_eq!(resolve(Some(&format!("bytes=-{n}")), size), Ok(Some(size.saturating_sub(n)..size)));
        }
    }
}

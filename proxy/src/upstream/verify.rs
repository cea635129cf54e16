//! Verification of a range answer before its bytes go anywhere: the one check every source's answer passes,
//! whatever protocol brought it. A shifted, short, long or foreign answer is an error, never cached bytes.

use std::ops::Range;

use super::{ObjectInfo, UpstreamError};

/// Parses `bytes a-b/size` (inclusive a..=b). `None` for anything else.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, size) = (a.parse().ok()?, b.parse().ok()?, size.parse().ok()?);
    (a <= b && b < size).then_some((a, b, size))
}

/// What an answer claims about itself.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The `Content-Range` value, if any.
    pub content_range: Option<&'a str>,
    /// The file (version) id the answer says it is from, if the protocol says.
    pub file_id: Option<&'a str>,
    pub body_len: u64,
}

/// Checks that an answer is exactly `range` of `obj`.
pub fn verify_range(
    obj: &ObjectInfo,
    range: &Range<u64>,
    answer: Answer<'_>,
) -> Result<(), UpstreamError> {
    let want = range.end - range.start;
    if let Some(id) = answer.file_id
        && id != &*obj.id
    {
        return Err(UpstreamError::Changed(format!(
            "asked for file id {} but got {id}",
            obj.id
        )));
    }
    match answer.content_range {
        Some(cr) => {
            let Some((a, b, size)) = parse_content_range(cr) else {
                return Err(UpstreamError::BadResponse(format!(
                    "unparseable Content-Range `{cr}`"
                )));
            };
            if size != obj.size {
                return Err(UpstreamError::Changed(format!(
                    "{} is now {size} bytes, catalog says {}",
                    obj.name, obj.size
                )));
            }
            if a != range.start || b != range.end - 1 {
                return Err(UpstreamError::BadResponse(format!(
                    "asked for bytes {}-{}, Content-Range says {a}-{b}",
                    range.start,
                    range.end - 1
                )));
            }
        }
        // Only a request for the whole file may come back without Content-Range (B2 answers `bytes=0-` with 200).
        None if range.start == 0 && want == obj.size => {}
        None => {
            return Err(UpstreamError::BadResponse(
                "range answer without Content-Range".into(),
            ));
        }
    }
    if answer.body_len != want {
        return Err(UpstreamError::BadResponse(format!(
            "expected {want} body bytes, got {}",
            answer.body_len
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes 9-0/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-9/100"), None);
    }

    fn obj(size: u64) -> ObjectInfo {
        ObjectInfo {
            name: "a".into(),
            id: "id1".into(),
            size,
            modified_ms: 0,
        }
    }

    fn ans<'a>(cr: Option<&'a str>, id: Option<&'a str>, len: u64) -> Answer<'a> {
        Answer {
            content_range: cr,
            file_id: id,
            body_len: len,
        }
    }

    #[test]
    fn verification() {
        let o = obj(100);
        assert!(verify_range(&o, &(0..10), ans(Some("bytes 0-9/100"), Some("id1"), 10)).is_ok());
        // shifted range, wrong size, wrong id, short body, missing Content-Range
        assert!(verify_range(&o, &(0..10), ans(Some("bytes 1-10/100"), None, 10)).is_err());
        assert!(matches!(
            verify_range(&o, &(0..10), ans(Some("bytes 0-9/101"), None, 10)),
            Err(UpstreamError::Changed(_))
        ));
        assert!(matches!(
            verify_range(&o, &(0..10), ans(Some("bytes 0-9/100"), Some("id2"), 10)),
            Err(UpstreamError::Changed(_))
        ));
        assert!(verify_range(&o, &(0..11), ans(Some("bytes 0-10/100"), None, 10)).is_err());
        assert!(verify_range(&o, &(0..10), ans(None, None, 10)).is_err());
        let whole = obj(10);
        assert!(verify_range(&whole, &(0..10), ans(None, None, 10)).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn content_range_roundtrip(a in 0u64..1<<40, len in 1u64..1<<20, extra in 0u64..1<<20) {
            let size = a + len + extra;
            let s = format!("bytes {}-{}/{}", a, a + len - 1, size);
            proptest::prop_assert_eq!(parse_content_range(&s), Some((a, a + len - 1, size)));
        }
    }
}

//! Keyset pagination: a page token is an opaque encoding of the last item's sort key, so pages
//! stay stable while rows are added and no query scans skipped rows.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

/// Where a page ends: the sort key of its last item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at_micros: i64,
    pub id: String,
}

impl PageCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at_micros, self.id))
    }

    pub fn decode(token: &str) -> Result<Self, String> {
        let invalid = || "is not a page token from a previous response".to_owned();
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
        let created_at_micros = micros.parse().map_err(|_| invalid())?;
        if id.is_empty() || id.len() > 64 {
            return Err(invalid());
        }
        Ok(Self {
            created_at_micros,
            id: id.to_owned(),
        })
    }
}

/// A parsed page request: how many, and after which item.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub size: usize,
    pub after: Option<PageCursor>,
}

impl PageRequest {
    /// From the request fields: a size of 0 means the default, sizes above the maximum are
    /// lowered to it, a negative size is an error.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, (&'static str, String)> {
        let size = match page_size {
            size if size < 0 => {
                return Err(("page_size", format!("must not be negative; got {size}")));
            }
            0 => DEFAULT_PAGE_SIZE,
            size => (size as usize).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(PageCursor::decode(page_token).map_err(|error| ("page_token", error))?)
        };
        Ok(Self { size, after })
    }

    /// Splits `size + 1` fetched items into the page and the cursor of the next page, if any.
    pub fn split<T>(
        &self,
        mut items: Vec<T>,
        cursor_of: impl Fn(&T) -> PageCursor,
    ) -> (Vec<T>, Option<PageCursor>) {
        if items.len() <= self.size {
            return (items, None);
        }
        items.truncate(self.size);
        let next = items.last().map(cursor_of);
        (items, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = PageCursor {
            created_at_micros: 1_800_000_000_000_000,
            id: "abc".into(),
        };
        assert_eq!(PageCursor::decode(&cursor.encode()), Ok(cursor));
        assert!(PageCursor::decode("!!!").is_err());
        assert!(PageCursor::decode(&URL_SAFE_NO_PAD.encode("no-colon")).is_err());
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(10_000, "").unwrap().size, MAX_PAGE_SIZE);
        assert!(PageRequest::parse(-1, "").is_err());
    }

    #[test]
    fn a_full_page_points_to_the_next() {
        let page = PageRequest {
            size: 2,
            after: None,
        };
        let cursor = |n: &i64| PageCursor {
            created_at_micros: *n,
            id: n.to_string(),
        };
        let (items, next) = page.split(vec![3, 2, 1], cursor);
        assert_eq!(items, [3, 2]);
        assert_eq!(next.unwrap().created_at_micros, 2);
        assert!(page.split(vec![3, 2], cursor).1.is_none());
    }
}

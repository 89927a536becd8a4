//! Query strings, percent-decoded: one parser for every handler.

use std::borrow::Cow;

/// The first value of `name` in `query`, percent-decoded (`+` is a space).
pub fn param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Every value of `name` in `query`, in order, percent-decoded.
pub fn params<'a>(query: Option<&'a str>, name: &str) -> Vec<Cow<'a, str>> {
    let Some(query) = query else {
        return Vec::new();
    };
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_value_decoded() {
        let q = Some("a=1&channel=news%2Fsport&channel=x&b");
        assert_eq!(param(q, "channel").as_deref(), Some("news/sport"));
        assert_eq!(param(q, "b").as_deref(), Some(""));
        assert_eq!(param(q, "c"), None);
        assert_eq!(param(None, "a"), None);
        assert_eq!(params(q, "channel"), ["news/sport", "x"]);
        assert!(params(None, "channel").is_empty());
    }
}

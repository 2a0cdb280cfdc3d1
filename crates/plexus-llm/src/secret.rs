//! An API key that cannot be printed by accident.

/// A provider key. `Debug` and `Display` print `ApiKey(****)`; only
/// [`ApiKey::expose`] gives the text, for the request header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key itself: only for building the authentication header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

/// Remove every occurrence of `key` from `text` (a provider may echo a bad
/// key in its error body, which then goes into an error message).
pub fn redact(text: &str, key: Option<&ApiKey>) -> String {
    match key {
        Some(k) if k.0.len() >= 4 => text.replace(k.expose(), "****"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_never_prints() {
        let k = ApiKey::new("sk-secret-123");
        assert_eq!(format!("{k:?}"), "ApiKey(****)");
        assert_eq!(format!("{k}"), "****");
        assert!(!format!("{:?}", Some(&k)).contains("secret"));
        assert_eq!(
            redact("bad key sk-secret-123 given", Some(&k)),
            "bad key **** given"
        );
    }
}

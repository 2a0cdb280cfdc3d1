//! Topics and topic patterns.
//!
//! A topic is `/`-separated segments (`plugin/jira/request`). A pattern may
//! use `*` for exactly one segment and `**` for any number of segments,
//! including none (`plugin/**` matches `plugin`, `plugin/a` and `plugin/a/b`).

use std::collections::HashMap;

/// The trie's segment maps hash with foldhash (seeded per process): a
/// publish looks up one segment per level, and SipHash was most of that.
type SegMap<V> = HashMap<Box<str>, Node<V>, foldhash::fast::RandomState>;

/// Longest topic accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Why a topic or pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic {0:?} is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong(String),
    #[error("topic {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("topic {0:?} contains a wildcard; only subscriptions may use * and **")]
    WildcardInTopic(String),
    #[error("pattern {0:?} mixes a wildcard with other characters in one segment")]
    BadWildcard(String),
    #[error("topic {0:?} contains a control character or whitespace")]
    BadChar(String),
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.chars().take(40).collect()));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TopicError::BadChar(s.to_string()));
    }
    if s.split('/').any(str::is_empty) {
        return Err(TopicError::EmptySegment(s.to_string()));
    }
    Ok(())
}

/// Validate a concrete topic (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.split('/').any(|s| s.contains('*')) {
        return Err(TopicError::WildcardInTopic(topic.to_string()));
    }
    Ok(())
}

/// [`validate_topic`] in one pass over the bytes for the usual ASCII topic
/// (the publish path runs it on every message); anything else takes the
/// reference path, so both accept and refuse exactly the same topics.
pub(crate) fn validate_topic_fast(topic: &str) -> Result<(), TopicError> {
    let b = topic.as_bytes();
    if b.is_empty() || b.len() > MAX_TOPIC_LEN || !b.is_ascii() {
        return validate_topic(topic);
    }
    let mut seg_len = 0usize;
    for &c in b {
        match c {
            b'/' => {
                if seg_len == 0 {
                    return validate_topic(topic);
                }
                seg_len = 0;
            }
            b'*' => return validate_topic(topic),
            c if c.is_ascii_control() || c.is_ascii_whitespace() || c == b' ' => {
                return validate_topic(topic)
            }
            _ => seg_len += 1,
        }
    }
    if seg_len == 0 {
        return validate_topic(topic);
    }
    Ok(())
}

/// Validate a subscription pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    check_common(pattern)?;
    for seg in pattern.split('/') {
        if seg.contains('*') && seg != "*" && seg != "**" {
            return Err(TopicError::BadWildcard(pattern.to_string()));
        }
    }
    Ok(())
}

/// Does `pattern` match `topic`? (Reference implementation; the trie is the fast path.)
pub fn matches(pattern: &str, topic: &str) -> bool {
    with_segments(pattern, |p| with_segments(topic, |t| match_segs(p, t)))
}

/// Split on `/` into a stack buffer (no allocation for the usual depth).
fn with_segments<R>(s: &str, f: impl FnOnce(&[&str]) -> R) -> R {
    const N: usize = 16;
    let mut buf: [&str; N] = [""; N];
    let mut n = 0;
    for seg in s.split('/') {
        if n == N {
            let v: Vec<&str> = s.split('/').collect();
            return f(&v);
        }
        buf[n] = seg;
        n += 1;
    }
    f(&buf[..n])
}

fn match_segs(p: &[&str], t: &[&str]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((&"**", rest)) => (0..=t.len()).any(|i| match_segs(rest, &t[i..])),
        Some((&"*", rest)) => !t.is_empty() && match_segs(rest, &t[1..]),
        Some((seg, rest)) => t.first() == Some(seg) && match_segs(rest, &t[1..]),
    }
}

/// A trie of patterns mapping to values, matched against concrete topics.
#[derive(Debug)]
pub struct TopicTrie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    exact: SegMap<V>,
    star: Option<Box<Node<V>>>,
    dstar: Option<Box<Node<V>>>,
    values: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            exact: SegMap::default(),
            star: None,
            dstar: None,
            values: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.exact.is_empty()
            && self.star.is_none()
            && self.dstar.is_none()
    }
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: PartialEq + Clone> TopicTrie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add `value` under `pattern` (the pattern must be valid).
    pub fn insert(&mut self, pattern: &str, value: V) {
        let mut node = &mut self.root;
        for seg in pattern.split('/') {
            node = match seg {
                "*" => node.star.get_or_insert_with(Default::default),
                "**" => node.dstar.get_or_insert_with(Default::default),
                s => node.exact.entry(s.into()).or_default(),
            };
        }
        node.values.push(value);
        self.len += 1;
    }

    /// Remove one `value` under `pattern`; true if it was there.
    pub fn remove(&mut self, pattern: &str, value: &V) -> bool {
        let segs: Vec<&str> = pattern.split('/').collect();
        let removed = remove_rec(&mut self.root, &segs, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Call `f` for every value whose pattern matches `topic`. A pattern with
    /// several `**` can match one topic in more than one way and is then
    /// reported more than once; [`TopicTrie::matches`] deduplicates.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&V)) {
        with_segments(topic, |segs| match_rec(&self.root, segs, &mut f));
    }

    /// All values matching `topic`, deduplicated.
    pub fn matches(&self, topic: &str) -> Vec<V> {
        let mut out: Vec<V> = Vec::new();
        self.for_each_match(topic, |v| {
            if !out.contains(v) {
                out.push(v.clone())
            }
        });
        out
    }
}

fn remove_rec<V: PartialEq>(node: &mut Node<V>, segs: &[&str], value: &V) -> bool {
    let Some((seg, rest)) = segs.split_first() else {
        return match node.values.iter().position(|v| v == value) {
            Some(i) => {
                node.values.swap_remove(i);
                true
            }
            None => false,
        };
    };
    let (removed, prune) = match *seg {
        "*" => match node.star.as_deref_mut() {
            Some(child) => {
                let r = remove_rec(child, rest, value);
                (r, child.is_empty())
            }
            None => (false, false),
        },
        "**" => match node.dstar.as_deref_mut() {
            Some(child) => {
                let r = remove_rec(child, rest, value);
                (r, child.is_empty())
            }
            None => (false, false),
        },
        s => match node.exact.get_mut(s) {
            Some(child) => {
                let r = remove_rec(child, rest, value);
                (r, child.is_empty())
            }
            None => (false, false),
        },
    };
    if prune {
        match *seg {
            "*" => node.star = None,
            "**" => node.dstar = None,
            s => {
                node.exact.remove(s);
            }
        }
    }
    removed
}

fn match_rec<V>(node: &Node<V>, segs: &[&str], f: &mut impl FnMut(&V)) {
    if let Some(dstar) = &node.dstar {
        // `**` swallows any number of segments: try every split point.
        for i in 0..=segs.len() {
            match_rec(dstar, &segs[i..], f);
        }
    }
    match segs.split_first() {
        None => node.values.iter().for_each(f),
        Some((seg, rest)) => {
            if let Some(child) = node.exact.get(*seg) {
                match_rec(child, rest, f);
            }
            if let Some(star) = &node.star {
                match_rec(star, rest, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn deep_topics_past_the_stack_buffer() {
        let deep: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        let topic = deep.join("/");
        assert!(matches("s0/**/s39", &topic));
        assert!(!matches("s0/**/s38", &topic));
        let mut t = TopicTrie::new();
        t.insert("s0/**", 1);
        t.insert(&topic, 2);
        assert_eq!(t.matches(&topic), vec![1, 2]);
    }

    #[test]
    fn wildcards() {
        assert!(matches("plugin/*/request", "plugin/jira/request"));
        assert!(!matches("plugin/*/request", "plugin/jira/x/request"));
        assert!(matches("plugin/**", "plugin/jira/x/request"));
        assert!(matches("plugin/**", "plugin"));
        assert!(matches("**", "a/b/c"));
        assert!(matches("**/status", "plugin/a/status"));
        assert!(matches("a/**/z", "a/z"));
        assert!(matches("a/**/z", "a/b/c/z"));
        assert!(!matches("a/**/z", "a/b/c/y"));
        assert!(!matches("system/health", "system/health/x"));
    }

    #[test]
    fn validation() {
        assert!(validate_topic("a/b").is_ok());
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert!(matches!(
            validate_topic("a//b"),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_topic("a/*"),
            Err(TopicError::WildcardInTopic(_))
        ));
        assert!(validate_pattern("a/*/**").is_ok());
        assert!(matches!(
            validate_pattern("a/b*"),
            Err(TopicError::BadWildcard(_))
        ));
        assert!(matches!(validate_topic("a b"), Err(TopicError::BadChar(_))));
        assert!(matches!(
            validate_topic(&"x".repeat(300)),
            Err(TopicError::TooLong(_))
        ));
    }

    #[test]
    fn trie_insert_match_remove() {
        let mut t = TopicTrie::new();
        t.insert("plugin/*/request", 1);
        t.insert("plugin/**", 2);
        t.insert("system/health", 3);
        t.insert("**", 4);
        let mut m = t.matches("plugin/jira/request");
        m.sort();
        assert_eq!(m, vec![1, 2, 4]);
        assert!(t.remove("plugin/**", &2));
        assert!(!t.remove("plugin/**", &2));
        let mut m = t.matches("plugin/jira/request");
        m.sort();
        assert_eq!(m, vec![1, 4]);
        assert_eq!(t.len(), 3);
    }

    fn seg() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string())
        ]
    }
    fn pat_seg() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => seg(),
            1 => Just("*".to_string()),
            1 => Just("**".to_string()),
        ]
    }

    fn any_topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('a'),
                Just('b'),
                Just('/'),
                Just('*'),
                Just(' '),
                Just('\t'),
                Just('\u{0b}'),
                Just('é'),
                Just('\u{7f}'),
                Just('\u{a0}'),
            ],
            0..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        /// The publish path's validator accepts and refuses exactly what the reference does.
        #[test]
        fn fast_topic_validation_agrees_with_reference(t in any_topic()) {
            prop_assert_eq!(validate_topic_fast(&t), validate_topic(&t));
        }

        /// The trie agrees with the reference matcher on random patterns and topics.
        #[test]
        fn trie_agrees_with_reference(
            pats in proptest::collection::vec(proptest::collection::vec(pat_seg(), 1..5), 1..8),
            topic in proptest::collection::vec(seg(), 1..6),
        ) {
            let topic = topic.join("/");
            let mut t = TopicTrie::new();
            let pats: Vec<String> = pats.into_iter().map(|p| p.join("/")).collect();
            for (i, p) in pats.iter().enumerate() {
                t.insert(p, i);
            }
            let mut got = t.matches(&topic);
            got.sort();
            let want: Vec<usize> = pats.iter().enumerate().filter(|(_, p)| matches(p, &topic)).map(|(i, _)| i).collect();
            prop_assert_eq!(got, want);
        }
    }
}

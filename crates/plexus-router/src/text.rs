//! Text analysis shared by indexing and querying: tokenising, stopwords,
//! stemming (Snowball English), token shapes and adjacent-word bigrams.
//!
//! Everything here is domain-independent: no word list in this file knows
//! anything about the plugins in the catalog.

use rust_stemmers::{Algorithm, Stemmer};

/// A shape token for identifiers like `PROJ-412` or `ABC-77` (letters, a
/// dash, digits). It is indexed like a word, so whether such identifiers
/// point to a plugin is learnt from the catalog text (argument hints,
/// examples), not decided here.
pub const SHAPE_KEY: &str = "#key";
/// A shape token for file names and dotted names like `.env`, `docker-compose.yml`.
pub const SHAPE_FILE: &str = "#file";

/// Common English function words and request filler. Generic; not tuned to
/// any catalog or request set.
const STOPWORDS: &[&str] = &[
    "a", "about", "above", "across", "after", "again", "against", "all", "also", "am", "an", "and",
    "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between",
    "both", "but", "by", "can", "could", "did", "do", "does", "doing", "done", "down", "during",
    "each", "either", "etc", "every", "few", "for", "from", "further", "get", "got", "had", "has",
    "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into",
    "is", "it", "its", "itself", "just", "let", "lets", "me", "might", "more", "most", "much",
    "must", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "one", "only",
    "or", "other", "our", "ours", "out", "over", "own", "please", "same", "she", "should", "so",
    "some", "such", "than", "that", "the", "their", "theirs", "them", "then", "there", "these",
    "they", "this", "those", "through", "to", "too", "under", "until", "up", "upon", "us", "use",
    "using", "very", "via", "want", "was", "we", "were", "what", "when", "where", "which", "while",
    "who", "whom", "why", "will", "with", "within", "without", "would", "you", "your", "yours",
    "yourself", "e", "g", "ie", "eg", "vs", "s", "t", "d", "ll", "re", "ve", "m", "make", "need",
    "like", "way", "ok", "yes", "x",
];

/// True for a (lower-case) stopword.
pub fn is_stopword(w: &str) -> bool {
    static SET: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    SET.get_or_init(|| STOPWORDS.iter().copied().collect())
        .contains(w)
}

/// One analysed token: the stemmed term and its byte offset in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub term: String,
    pub pos: usize,
}

/// Tokeniser + stemmer. Cheap to build; holds the Snowball stemmer.
pub struct Analyzer {
    stemmer: Stemmer,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Analyzer(snowball-en)")
    }
}

impl Analyzer {
    pub fn new() -> Self {
        Analyzer {
            stemmer: Stemmer::create(Algorithm::English),
        }
    }

    /// Stem one lower-case word.
    pub fn stem(&self, w: &str) -> String {
        self.stemmer.stem(w).into_owned()
    }

    /// Analyse `text` into terms: words (stopwords and bare numbers dropped,
    /// stemmed), shape tokens, the parts of camelCase words, and bigrams
    /// `a_b` of content words that stand next to each other in the text.
    pub fn analyze(&self, text: &str) -> Vec<Token> {
        self.analyze_with(text, &mut |w| self.stem(w))
    }

    /// As [`Analyzer::analyze`], remembering stems in `cache` (indexing a
    /// large catalog stems the same words over and over).
    pub fn analyze_cached(&self, text: &str, cache: &mut FastMap<String, String>) -> Vec<Token> {
        self.analyze_with(text, &mut |w| {
            if let Some(s) = cache.get(w) {
                return s.clone();
            }
            let s = self.stem(w);
            cache.insert(w.to_string(), s.clone());
            s
        })
    }

    fn analyze_with(&self, text: &str, stem_fn: &mut dyn FnMut(&str) -> String) -> Vec<Token> {
        let mut out = Vec::with_capacity(text.len() / 5 + 4);
        // previous content word (stemmed) and whether it is adjacent
        let mut prev: Option<String> = None;
        for raw in raw_words(text) {
            let word = raw.text;
            if let Some(shape) = shape_of(word) {
                out.push(Token {
                    term: shape.to_string(),
                    pos: raw.pos,
                });
            }
            // Split into alphanumeric runs ("docker-compose" → docker, compose).
            for (off, part) in alnum_runs(word) {
                let pos = raw.pos + off;
                let lower = part.to_ascii_lowercase();
                if lower.bytes().all(|b| b.is_ascii_digit()) || is_stopword(&lower) {
                    prev = None;
                    continue;
                }
                let stem = stem_fn(&lower);
                if let Some(p) = prev.take() {
                    out.push(Token {
                        term: format!("{p}_{stem}"),
                        pos,
                    });
                }
                // camelCase parts as extra terms ("DatePicker" → date, picker).
                let parts = camel_parts(part);
                if parts.len() > 1 {
                    for cp in parts {
                        let l = cp.to_ascii_lowercase();
                        if l.len() > 1 && !is_stopword(&l) {
                            out.push(Token {
                                term: stem_fn(&l),
                                pos,
                            });
                        }
                    }
                }
                out.push(Token {
                    term: stem.clone(),
                    pos,
                });
                prev = Some(stem);
            }
            if raw.breaks_phrase {
                prev = None;
            }
        }
        out
    }
}

struct RawWord<'a> {
    text: &'a str,
    pos: usize,
    /// Punctuation after the word (`,`, `.`, `;`...) ends a phrase.
    breaks_phrase: bool,
}

/// Whitespace-separated chunks with surrounding punctuation trimmed, except
/// a leading dot (`.env`).
fn raw_words(text: &str) -> impl Iterator<Item = RawWord<'_>> {
    let mut words = vec![];
    let mut start = None;
    let bytes = text.as_bytes();
    for (i, &b) in bytes
        .iter()
        .enumerate()
        .chain(std::iter::once((bytes.len(), &b' ')))
    {
        let sep = b.is_ascii_whitespace() || matches!(b, b'(' | b')' | b'[' | b']' | b'"' | b'`');
        match (start, sep) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                let chunk = &text[s..i];
                let trimmed_end = chunk.trim_end_matches(|c: char| !c.is_alphanumeric());
                let breaks_phrase = trimmed_end.len() < chunk.len() || b != b' ';
                let lead = trimmed_end.len()
                    - trimmed_end
                        .trim_start_matches(|c: char| !c.is_alphanumeric() && c != '.')
                        .len();
                if lead < trimmed_end.len() {
                    words.push(RawWord {
                        text: &trimmed_end[lead..],
                        pos: s + lead,
                        breaks_phrase,
                    });
                }
                start = None;
            }
            _ => {}
        }
    }
    words.into_iter()
}

/// Maximal alphanumeric runs of a chunk with their byte offsets.
fn alnum_runs(s: &str) -> impl Iterator<Item = (usize, &str)> {
    // Offsets from the parts' own addresses: separators may be several
    // bytes long (an em dash, a middle dot).
    let base = s.as_ptr() as usize;
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(move |p| (p.as_ptr() as usize - base, p))
}

/// `DatePicker` → [Date, Picker]; `WCAG` → [WCAG]; `llama3` → [llama3].
fn camel_parts(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut cuts = vec![0];
    for i in 1..b.len() {
        let (p, c) = (b[i - 1], b[i]);
        let next_lower = b.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        if (p.is_ascii_lowercase() && c.is_ascii_uppercase())
            || (p.is_ascii_uppercase() && c.is_ascii_uppercase() && next_lower)
        {
            cuts.push(i);
        }
    }
    cuts.push(b.len());
    cuts.windows(2).map(|w| &s[w[0]..w[1]]).collect()
}

/// Shape class of a raw chunk, if it has one.
fn shape_of(w: &str) -> Option<&'static str> {
    // KEY-123: upper-case letters (2+), dash, digits.
    if let Some((a, d)) = w.split_once('-') {
        if a.len() >= 2
            && a.bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && a.as_bytes()[0].is_ascii_uppercase()
            && !d.is_empty()
            && d.bytes().all(|c| c.is_ascii_digit())
        {
            return Some(SHAPE_KEY);
        }
    }
    // .env, file.yml, next.config.js (a dot with letters after it, not a version number)
    if let Some(i) = w.rfind('.') {
        let ext = &w[i + 1..];
        if !ext.is_empty()
            && ext.len() <= 5
            && ext.bytes().all(|c| c.is_ascii_alphabetic())
            && (i == 0 || w[..i].bytes().any(|c| c.is_ascii_alphabetic()))
        {
            return Some(SHAPE_FILE);
        }
    }
    None
}

/// A fast non-cryptographic hasher (the Fx hash of rustc) for the index's
/// term maps: keys are catalog words, not attacker-chosen at a scale where
/// flooding matters, and SipHash dominated index build time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(s: &str) -> Vec<String> {
        Analyzer::new()
            .analyze(s)
            .into_iter()
            .map(|t| t.term)
            .collect()
    }

    #[test]
    fn stopwords_and_numbers_dropped_words_stemmed() {
        assert_eq!(
            terms("Turn off all the lights downstairs"),
            vec!["turn", "light", "light_downstair", "downstair"]
        );
        assert_eq!(terms("Log 3 hours"), vec!["log", "hour"]);
    }

    #[test]
    fn adjacent_content_words_make_bigrams() {
        let t = terms("open a pull request");
        assert_eq!(t, vec!["open", "pull", "pull_request", "request"]);
        // punctuation breaks the phrase
        let t = terms("Postgres, Redis");
        assert!(!t.iter().any(|x| x.contains('_')), "{t:?}");
    }

    #[test]
    fn hyphenated_and_camel_case_split() {
        let t = terms("docker-compose DatePicker");
        assert!(t.contains(&"docker".to_string()));
        assert!(t.contains(&"compos".to_string()));
        assert!(t.contains(&"docker_compos".to_string()));
        assert!(t.contains(&"datepick".to_string()));
        assert!(t.contains(&"date".to_string()));
        assert!(t.contains(&"picker".to_string()));
    }

    #[test]
    fn shapes() {
        assert!(terms("Start work on PROJ-412").contains(&SHAPE_KEY.to_string()));
        assert!(terms("validate the staging .env now").contains(&SHAPE_FILE.to_string()));
        assert!(!terms("release 4.2 train").contains(&SHAPE_FILE.to_string()));
        assert!(!terms("a well-known thing").contains(&SHAPE_KEY.to_string()));
    }

    #[test]
    fn positions_stay_on_char_boundaries_after_multibyte_separators() {
        let text = "docker—compose·file naïve Größe";
        for t in Analyzer::new().analyze(text) {
            assert!(text.is_char_boundary(t.pos), "{t:?}");
        }
        let toks = Analyzer::new().analyze("docker—compose");
        assert_eq!(toks.last().unwrap().pos, "docker—".len());
    }

    #[test]
    fn positions_are_byte_offsets() {
        let a = Analyzer::new();
        let toks = a.analyze("the Vault password");
        assert_eq!(toks[0].term, "vault");
        assert_eq!(toks[0].pos, 4);
    }
}

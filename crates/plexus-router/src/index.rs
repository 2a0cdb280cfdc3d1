//! BM25F index over the catalog: one document per agent, per command and
//! per plugin (its `plugin.json` and manifest fields), four weighted fields,
//! an inverted index whose postings carry the finished per-term weight so a
//! query is a sum over postings.

use plexus_catalog::{Catalog, ModelTier, Plugin};
use serde::{Deserialize, Serialize};

use crate::text::{Analyzer, FastMap};

/// The fields of a document, in weight order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The agent / command / plugin name.
    Name = 0,
    /// Keywords, triggers, capabilities, category, manifest routing keywords.
    Keywords = 1,
    /// Description, when-to-use, examples, argument hint.
    Description = 2,
    /// Markdown body and tool names.
    Body = 3,
}

pub const NFIELDS: usize = 4;

/// BM25F parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bm25Params {
    pub k1: f32,
    /// Weight of each field (Name, Keywords, Description, Body).
    pub weight: [f32; NFIELDS],
    /// Length normalisation of each field.
    pub b: [f32; NFIELDS],
}

impl Default for Bm25Params {
    fn default() -> Self {
        // Usual BM25F shape: short, curated fields weigh more than the body.
        Bm25Params {
            k1: 1.2,
            weight: [3.0, 2.5, 2.0, 1.0],
            b: [0.3, 0.5, 0.6, 0.75],
        }
    }
}

/// What a document describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// The plugin as a whole (plugin.json, manifest).
    Plugin,
    Agent,
    Command,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Plugin => "plugin",
            DocKind::Agent => "agent",
            DocKind::Command => "command",
        }
    }
}

/// One indexed document.
#[derive(Debug, Clone)]
pub struct DocMeta {
    pub plugin: u32,
    pub kind: DocKind,
    pub name: String,
    /// The model its author declared, if any.
    pub model: Option<ModelTier>,
    /// What the sentence embedding reads: name, description and the start
    /// of the body, then the body's first passages one by one (the model
    /// sees ~128 word pieces of each; a request matches the closest).
    pub texts: Vec<String>,
}

/// One posting: a document and the finished BM25F weight of the term in it
/// (idf × saturated pseudo-frequency).
#[derive(Debug, Clone, Copy)]
pub struct Posting {
    pub doc: u32,
    pub w: f32,
}

/// Per-plugin facts the router needs besides the documents.
#[derive(Debug, Clone)]
pub struct PluginMeta {
    pub name: String,
    pub priority: u8,
    pub domains: Vec<String>,
    pub contexts: Vec<String>,
    pub patterns: Vec<String>,
    /// plugin.json keywords (and manifest routing keywords).
    pub keywords: Vec<String>,
    /// Stemmed terms of each keyword, parallel to `keywords`.
    pub keyword_terms: Vec<Vec<u32>>,
    /// The plugin-level document.
    pub plugin_doc: u32,
    /// Agent and command documents.
    pub docs: std::ops::Range<u32>,
}

/// The inverted index.
#[derive(Debug)]
pub struct Index {
    pub analyzer: Analyzer,
    pub params: Bm25Params,
    pub terms: FastMap<String, u32>,
    pub postings: Vec<Vec<Posting>>,
    pub idf: Vec<f32>,
    /// idf a term that no document has would get.
    pub idf_unseen: f32,
    pub docs: Vec<DocMeta>,
    pub plugins: Vec<PluginMeta>,
}

/// Text of one document, field by field, before analysis.
#[derive(Default)]
struct DocText {
    fields: [String; NFIELDS],
}

impl DocText {
    fn add(&mut self, f: Field, s: &str) {
        let t = &mut self.fields[f as usize];
        if !s.trim().is_empty() {
            if !t.is_empty() {
                t.push_str(" .\n");
            }
            t.push_str(s);
        }
    }
    fn add_all<S: AsRef<str>>(&mut self, f: Field, items: &[S]) {
        for s in items {
            self.add(f, s.as_ref());
        }
    }
}

/// The text one document is embedded from: its name in words, its
/// descriptions, then the start of its body (a prompt's first lines say
/// what the agent is for).
fn semantic_text(d: &DocText) -> Vec<String> {
    const HEAD_BODY_CHARS: usize = 400;
    const CHUNK_WORDS: usize = 50;
    // Four passages measured better held out than none (everyday top-1
    // 0.657 against 0.610, docs/routing.md); each costs an embedding at
    // index time only.
    const CHUNKS: usize = 4;
    let name = d.fields[Field::Name as usize].replace(['-', '_'], " ");
    let desc = &d.fields[Field::Description as usize];
    let words: Vec<&str> = d.fields[Field::Body as usize]
        .split_whitespace()
        .filter(|w| {
            !w.chars()
                .all(|c| c == '#' || c == '-' || c == '*' || c == '|')
        })
        .collect();
    let head_body: String = words.join(" ").chars().take(HEAD_BODY_CHARS).collect();
    let mut out = vec![format!("{name}: {desc}. {head_body}").trim().to_string()];
    for c in words.chunks(CHUNK_WORDS).take(CHUNKS) {
        out.push(format!("{name}: {}", c.join(" ")));
    }
    out
}

fn plugin_text(p: &Plugin) -> DocText {
    let m = &p.manifest;
    let mut d = DocText::default();
    d.add(Field::Name, &p.name);
    d.add_all(Field::Keywords, &p.keywords);
    d.add_all(Field::Keywords, &m.routing.keywords);
    d.add_all(Field::Keywords, &m.capabilities.domains);
    d.add_all(Field::Keywords, &m.capabilities.contexts);
    d.add_all(Field::Keywords, &m.capabilities.patterns);
    d.add_all(Field::Keywords, &m.capabilities.integrations);
    for cp in &m.routing.context_patterns {
        d.add(Field::Keywords, &pattern_literals(cp).join(" "));
    }
    d.add(Field::Description, &p.description);
    if let Some(desc) = &m.plugin.description {
        if desc != &p.description {
            d.add(Field::Description, desc);
        }
    }
    for s in &p.mcp_servers {
        d.add(Field::Body, &s.name);
        if let Some(x) = &s.description {
            d.add(Field::Body, x);
        }
    }
    d
}

/// The literal fragments of a (regex-like) context pattern: `deploy.*prod` → [deploy, prod].
pub fn pattern_literals(p: &str) -> Vec<String> {
    p.split(|c: char| !(c.is_alphanumeric() || c == ' ' || c == '-' || c == '_'))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn agent_text(a: &plexus_catalog::Agent) -> DocText {
    let mut d = DocText::default();
    d.add(Field::Name, &a.name);
    d.add_all(Field::Keywords, &a.keywords);
    d.add_all(Field::Keywords, &a.triggers);
    d.add_all(Field::Keywords, &a.capabilities);
    if let Some(c) = &a.category {
        d.add(Field::Keywords, c);
    }
    d.add(Field::Description, &a.description);
    if let Some(w) = &a.when_to_use {
        d.add(Field::Description, w);
    }
    d.add_all(Field::Description, &a.examples);
    d.add(Field::Body, &a.body);
    d.add_all(Field::Body, &a.tools);
    d
}

fn command_text(c: &plexus_catalog::Command) -> DocText {
    let mut d = DocText::default();
    d.add(Field::Name, &c.name);
    if let Some(a) = &c.alias {
        d.add(Field::Name, a);
    }
    d.add_all(Field::Keywords, &c.keywords);
    d.add_all(Field::Keywords, &c.triggers);
    d.add(Field::Description, &c.description);
    if let Some(w) = &c.when_to_use {
        d.add(Field::Description, w);
    }
    if let Some(h) = &c.argument_hint {
        d.add(Field::Description, h);
    }
    d.add_all(Field::Description, &c.examples);
    d.add(Field::Body, &c.body);
    d.add_all(Field::Body, &c.tools);
    d
}

impl Index {
    /// Index every plugin, agent and command of `catalog`.
    pub fn build(catalog: &Catalog, params: Bm25Params) -> Index {
        let analyzer = Analyzer::new();
        let mut terms: FastMap<String, u32> = FastMap::default();
        let mut docs = vec![];
        let mut plugins = vec![];
        // per doc: (term, per-field tf), and per-field lengths
        let mut doc_tf: Vec<Vec<(u32, [f32; NFIELDS])>> = vec![];
        let mut doc_len: Vec<[f32; NFIELDS]> = vec![];

        let intern = |terms: &mut FastMap<String, u32>, t: String| -> u32 {
            let n = terms.len() as u32;
            *terms.entry(t).or_insert(n)
        };
        let mut stems: FastMap<String, String> = FastMap::default();
        let mut add_doc = |text: DocText,
                           meta: DocMeta,
                           terms: &mut FastMap<String, u32>,
                           docs: &mut Vec<DocMeta>|
         -> u32 {
            let mut tf: FastMap<u32, [f32; NFIELDS]> = FastMap::default();
            let mut len = [0f32; NFIELDS];
            for (f, s) in text.fields.iter().enumerate() {
                for tok in analyzer.analyze_cached(s, &mut stems) {
                    let id = intern(terms, tok.term);
                    tf.entry(id).or_default()[f] += 1.0;
                    len[f] += 1.0;
                }
            }
            let mut tf: Vec<_> = tf.into_iter().collect();
            tf.sort_unstable_by_key(|x| x.0);
            doc_tf.push(tf);
            doc_len.push(len);
            docs.push(DocMeta {
                texts: semantic_text(&text),
                ..meta
            });
            (docs.len() - 1) as u32
        };

        for (pi, p) in catalog.plugins.iter().enumerate() {
            let pi = pi as u32;
            let plugin_doc = add_doc(
                plugin_text(p),
                DocMeta {
                    plugin: pi,
                    kind: DocKind::Plugin,
                    name: p.name.clone(),
                    model: None,
                    texts: vec![],
                },
                &mut terms,
                &mut docs,
            );
            let first = docs.len() as u32;
            for a in &p.agents {
                add_doc(
                    agent_text(a),
                    DocMeta {
                        plugin: pi,
                        kind: DocKind::Agent,
                        name: a.name.clone(),
                        model: a.model,
                        texts: vec![],
                    },
                    &mut terms,
                    &mut docs,
                );
            }
            for c in &p.commands {
                add_doc(
                    command_text(c),
                    DocMeta {
                        plugin: pi,
                        kind: DocKind::Command,
                        name: c.name.clone(),
                        model: c.model,
                        texts: vec![],
                    },
                    &mut terms,
                    &mut docs,
                );
            }
            let m = &p.manifest;
            let mut keywords: Vec<String> = p.keywords.clone();
            for k in m.routing.keywords.iter().chain(&m.capabilities.domains) {
                if !keywords.contains(k) {
                    keywords.push(k.clone());
                }
            }
            plugins.push(PluginMeta {
                name: p.name.clone(),
                priority: m.routing.priority,
                domains: m.capabilities.domains.clone(),
                contexts: m.capabilities.contexts.clone(),
                patterns: m.capabilities.patterns.clone(),
                keyword_terms: vec![],
                keywords,
                plugin_doc,
                docs: first..docs.len() as u32,
            });
        }
        for p in &mut plugins {
            p.keyword_terms = p
                .keywords
                .iter()
                .map(|k| {
                    analyzer
                        .analyze(k)
                        .into_iter()
                        .filter(|t| !t.term.contains('_'))
                        .filter_map(|t| terms.get(&t.term).copied())
                        .collect()
                })
                .collect();
        }

        let n = docs.len().max(1) as f32;
        let mut avg = [0f32; NFIELDS];
        for l in &doc_len {
            for f in 0..NFIELDS {
                avg[f] += l[f];
            }
        }
        for a in &mut avg {
            *a = (*a / n).max(1.0);
        }
        let mut df = vec![0u32; terms.len()];
        for tf in &doc_tf {
            for (t, _) in tf {
                df[*t as usize] += 1;
            }
        }
        let idf: Vec<f32> = df
            .iter()
            .map(|&d| (1.0 + (n - d as f32 + 0.5) / (d as f32 + 0.5)).ln())
            .collect();
        let mut postings: Vec<Vec<Posting>> =
            df.iter().map(|&d| Vec::with_capacity(d as usize)).collect();
        for (d, tf) in doc_tf.iter().enumerate() {
            let len = &doc_len[d];
            for (t, ftf) in tf {
                let mut pseudo = 0f32;
                for f in 0..NFIELDS {
                    if ftf[f] > 0.0 {
                        let norm = 1.0 - params.b[f] + params.b[f] * len[f] / avg[f];
                        pseudo += params.weight[f] * ftf[f] / norm;
                    }
                }
                let w = idf[*t as usize] * pseudo * (params.k1 + 1.0) / (params.k1 + pseudo);
                postings[*t as usize].push(Posting { doc: d as u32, w });
            }
        }
        Index {
            analyzer,
            params,
            terms,
            postings,
            idf,
            idf_unseen: (1.0 + (n + 0.5) / 0.5f32).ln(),
            docs,
            plugins,
        }
    }

    /// The most a single posting of a term can weigh: idf × (k1+1).
    pub fn max_term_weight(&self, idf: f32) -> f32 {
        idf * (self.params.k1 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_catalog::{Agent, Manifest};

    pub(crate) fn plugin(name: &str, agents: &[(&str, &str)]) -> Plugin {
        Plugin {
            name: name.into(),
            version: "1".into(),
            description: String::new(),
            keywords: vec![],
            agents: agents
                .iter()
                .map(|(n, d)| Agent {
                    name: n.to_string(),
                    description: d.to_string(),
                    ..Default::default()
                })
                .collect(),
            commands: vec![],
            mcp_servers: vec![],
            manifest: Manifest::default_for(name),
            claude_dir: None,
            manifest_file: None,
        }
    }

    fn score(ix: &Index, q: &str) -> Vec<f32> {
        let mut s = vec![0f32; ix.docs.len()];
        for t in ix.analyzer.analyze(q) {
            if let Some(&id) = ix.terms.get(&t.term) {
                for p in &ix.postings[id as usize] {
                    s[p.doc as usize] += p.w;
                }
            }
        }
        s
    }

    #[test]
    fn rare_terms_weigh_more_than_common_ones() {
        let c = Catalog {
            plugins: vec![plugin(
                "p",
                &[
                    ("a", "manage the vault secrets"),
                    ("b", "manage the dashboards"),
                    ("c", "manage the lights"),
                ],
            )],
            diagnostics: vec![],
        };
        let ix = Index::build(&c, Bm25Params::default());
        let manage = ix.idf[ix.terms["manag"] as usize];
        let vault = ix.idf[ix.terms["vault"] as usize];
        assert!(vault > manage, "{vault} {manage}");
        let s = score(&ix, "vault");
        // doc 0 is the plugin doc, 1 is agent a
        assert!(s[1] > 0.0 && s[2] == 0.0 && s[3] == 0.0, "{s:?}");
    }

    #[test]
    fn name_field_outweighs_body_and_length_normalises() {
        let mut p = plugin(
            "p",
            &[("vault-keeper", "keeps things"), ("other", "keeps things")],
        );
        p.agents[1].body = "vault ".to_string() + &"filler words here ".repeat(30);
        let c = Catalog {
            plugins: vec![p],
            diagnostics: vec![],
        };
        let ix = Index::build(&c, Bm25Params::default());
        let s = score(&ix, "vault");
        assert!(s[1] > s[2] && s[2] > 0.0, "{s:?}");
    }

    #[test]
    fn tf_saturates() {
        let c = Catalog {
            plugins: vec![plugin(
                "p",
                &[
                    ("a", "backup"),
                    ("b", "backup backup backup backup backup backup"),
                    ("c", "x"),
                ],
            )],
            diagnostics: vec![],
        };
        let params = Bm25Params {
            b: [0.0; NFIELDS],
            ..Default::default()
        };
        let ix = Index::build(&c, params);
        let s = score(&ix, "backup");
        assert!(s[2] > s[1], "{s:?}");
        assert!(s[2] < 6.0 * s[1] / 2.0, "saturation: {s:?}");
        assert!(s[2] <= ix.max_term_weight(ix.idf[ix.terms["backup"] as usize]) + 1e-4);
    }
}

//! Prices per model id, as data: usage in, dollars out.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::types::Usage;

/// The built-in table (`prices.toml` in this crate).
pub const DEFAULT_PRICES: &str = include_str!("../prices.toml");

/// The price of one model, US dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached prompt tokens; the input price when absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Other ids of the same model.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    models: BTreeMap<String, Price>,
}

/// What a call cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub usd: f64,
    /// False when the model id has no price: `usd` is then 0, not a guess.
    pub priced: bool,
}

/// A price table that is wrong, naming the entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct PriceError {
    pub source_name: String,
    pub message: String,
}

/// Prices by model id (aliases included).
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    by_id: BTreeMap<String, Price>,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable::parse(DEFAULT_PRICES, "built-in prices.toml")
            .expect("the built-in price table parses")
    }
}

impl PriceTable {
    /// Parse a table from TOML text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<PriceTable, PriceError> {
        let f: PriceFile = toml::from_str(text).map_err(|e| PriceError {
            source_name: source_name.to_string(),
            message: match e.span() {
                Some(s) => format!(
                    "line {}: {}",
                    text[..s.start].matches('\n').count() + 1,
                    e.message()
                ),
                None => e.message().to_string(),
            },
        })?;
        let mut t = PriceTable {
            by_id: BTreeMap::new(),
        };
        t.add(f, source_name)?;
        Ok(t)
    }

    fn add(&mut self, f: PriceFile, source_name: &str) -> Result<(), PriceError> {
        for (id, p) in f.models {
            for (field, v) in [
                ("input", Some(p.input)),
                ("output", Some(p.output)),
                ("cached_input", p.cached_input),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(PriceError {
                            source_name: source_name.to_string(),
                            message: format!("models.{id:?}.{field} is {v}, must be a price >= 0"),
                        });
                    }
                }
            }
            for a in &p.aliases {
                self.by_id.insert(a.clone(), p.clone());
            }
            self.by_id.insert(id, p);
        }
        Ok(())
    }

    /// The built-in table with the entries of `file` over it.
    pub fn with_file(path: &Path) -> Result<PriceTable, PriceError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PriceError {
            source_name: name.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let over = PriceTable::parse(&text, &name)?;
        let mut t = PriceTable::default();
        t.by_id.extend(over.by_id);
        Ok(t)
    }

    pub fn price(&self, model: &str) -> Option<&Price> {
        self.by_id.get(model)
    }

    /// The cost of `usage` on `model`.
    pub fn cost(&self, model: &str, usage: &Usage) -> Cost {
        let Some(p) = self.price(model) else {
            return Cost {
                usd: 0.0,
                priced: false,
            };
        };
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        let usd = (fresh as f64 * p.input
            + cached as f64 * p.cached_input.unwrap_or(p.input)
            + usage.output_tokens as f64 * p.output)
            / 1_000_000.0;
        Cost { usd, priced: true }
    }

    /// How many output tokens `budget_usd` still buys on `model` after a
    /// prompt of `input_tokens`; `None` when the model has no price (the
    /// budget cannot bound it) or is free.
    pub fn affordable_output(
        &self,
        model: &str,
        input_tokens: u64,
        budget_usd: f64,
    ) -> Option<u64> {
        let p = self.price(model)?;
        if p.output <= 0.0 {
            return None;
        }
        let left = budget_usd - input_tokens as f64 * p.input / 1_000_000.0;
        if left <= 0.0 {
            return Some(0);
        }
        Some((left * 1_000_000.0 / p.output).floor() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_to_dollars() {
        let t = PriceTable::default();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cached_input_tokens: 0,
        };
        let c = t.cost("claude-sonnet-4-5", &u);
        assert!(c.priced);
        assert!((c.usd - (3.0 + 1.5)).abs() < 1e-9, "{c:?}");
        // An alias has the same price; cached tokens are cheaper.
        let cached = Usage {
            cached_input_tokens: 500_000,
            ..u
        };
        let c = t.cost("claude-sonnet-4-5-20250929", &cached);
        assert!((c.usd - (1.5 + 0.15 + 1.5)).abs() < 1e-9, "{c:?}");
        let c = t.cost(
            "gpt-4.1-mini",
            &Usage {
                input_tokens: 2000,
                output_tokens: 500,
                cached_input_tokens: 0,
            },
        );
        assert!(
            (c.usd - (2000.0 * 0.4 + 500.0 * 1.6) / 1e6).abs() < 1e-12,
            "{c:?}"
        );
    }

    #[test]
    fn an_unknown_model_costs_nothing_and_says_so() {
        let t = PriceTable::default();
        let c = t.cost(
            "claude-sonnet-4-5-preview",
            &Usage {
                input_tokens: 10,
                output_tokens: 10,
                cached_input_tokens: 0,
            },
        );
        assert_eq!(
            c,
            Cost {
                usd: 0.0,
                priced: false
            }
        );
        let free = t.cost(
            "smollm2-135m-instruct",
            &Usage {
                input_tokens: 10,
                output_tokens: 10,
                cached_input_tokens: 0,
            },
        );
        assert_eq!(
            free,
            Cost {
                usd: 0.0,
                priced: true
            }
        );
    }

    #[test]
    fn a_file_overrides_and_adds_and_bad_entries_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.toml");
        std::fs::write(&f, "[models.\"gpt-4.1\"]\ninput = 1.0\noutput = 2.0\n[models.\"my-model\"]\ninput = 0.5\noutput = 0.5\n").unwrap();
        let t = PriceTable::with_file(&f).unwrap();
        assert_eq!(t.price("gpt-4.1").unwrap().input, 1.0);
        assert!(t.price("my-model").is_some());
        assert!(
            t.price("claude-opus-4-1").is_some(),
            "built-in entries stay"
        );
        let e =
            PriceTable::parse("[models.x]\ninput = -1.0\noutput = 1.0\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("models.\"x\".input"), "{e}");
        let e = PriceTable::parse("[models.x]\ninput = 1.0\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("f.toml: line 1"), "{e}");
    }

    #[test]
    fn a_budget_buys_output_tokens() {
        let t = PriceTable::default();
        // $0.01 on sonnet after 1000 prompt tokens ($0.003): $0.007 / $15 per M.
        assert_eq!(
            t.affordable_output("claude-sonnet-4-5", 1000, 0.01),
            Some(466)
        );
        assert_eq!(
            t.affordable_output("claude-sonnet-4-5", 1_000_000, 0.01),
            Some(0)
        );
        assert_eq!(t.affordable_output("unknown", 0, 1.0), None);
        assert_eq!(t.affordable_output("smollm2-135m-instruct", 0, 1.0), None);
    }
}

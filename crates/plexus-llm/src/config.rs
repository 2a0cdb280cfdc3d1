//! The node's `[llm]` table, a plugin's `[llm]` override, and the resolved
//! settings of one provider endpoint. The key itself is never configured:
//! only the *name* of the environment variable that holds it, read when a
//! call is made.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use plexus_catalog::{LlmSpec, ModelTier, ProviderKind};
use serde::{Deserialize, Serialize};

use crate::error::{Endpoint, ProviderError};
use crate::secret::ApiKey;

/// The variable every provider reads its key from first.
pub const KEY_ENV: &str = "PLEXUS_LLM_API_KEY";

/// A configuration value that is wrong, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The node file's `[llm]` table (snake_case, like the rest of the node's
/// file). Only `provider` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    pub provider: ProviderKind,
    /// Default: `https://api.anthropic.com` or `https://api.openai.com`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The variable holding the key. Default: `PLEXUS_LLM_API_KEY`, then
    /// `ANTHROPIC_API_KEY` or `OPENAI_API_KEY` by provider.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Whether a call without a key is refused before it is sent. Default:
    /// true for the providers' own endpoints, false for any other base URL
    /// (a local llama.cpp, Ollama or vLLM server usually takes none).
    #[serde(default)]
    pub key_required: Option<bool>,
    /// Model ids by tier; tiers left out take the provider's defaults.
    #[serde(default)]
    pub models: BTreeMap<ModelTier, String>,
    /// Time to open the connection (default 10,000 ms).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for the response headers and between two chunks of a
    /// stream (default 120,000 ms).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// A price table (TOML, as `prices.toml` in this crate) over the
    /// built-in one.
    #[serde(default)]
    pub prices_file: Option<PathBuf>,
}

impl LlmConfig {
    /// A configuration of `provider` with every default.
    pub fn new(provider: ProviderKind) -> LlmConfig {
        LlmConfig {
            provider,
            base_url: None,
            api_key_env: None,
            key_required: None,
            models: BTreeMap::new(),
            connect_timeout_ms: None,
            idle_timeout_ms: None,
            prices_file: None,
        }
    }

    /// Parse a `[llm]` table on its own (the node embeds the type in its
    /// file instead), then validate it.
    pub fn from_toml(text: &str) -> Result<LlmConfig, ConfigError> {
        let c: LlmConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            bad("llm", format!("{}{at}", e.message()))
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.base_url {
            check_url("llm.base_url", u)?;
        }
        if let Some(v) = &self.api_key_env {
            if !plexus_catalog::llm::valid_env_name(v) {
                return Err(bad(
                    "llm.api_key_env",
                    format!("{:?} is not an environment variable name (A-Z, 0-9, _); put the key in the environment and its name here", crate::error::cut(v, 12)),
                ));
            }
        }
        for (tier, id) in &self.models {
            if id.trim().is_empty() {
                return Err(bad(&format!("llm.models.{tier}"), "empty model id"));
            }
        }
        for (field, v) in [
            ("llm.connect_timeout_ms", self.connect_timeout_ms),
            ("llm.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v == Some(0) {
                return Err(bad(field, "must be > 0"));
            }
        }
        Ok(())
    }

    /// The endpoint settings for a plugin, its `[llm]` table (if any) over
    /// this one.
    pub fn resolve(&self, plugin: Option<&LlmSpec>) -> Result<ProviderConfig, ConfigError> {
        self.validate()?;
        let over = plugin.cloned().unwrap_or_default();
        over.validate().map_err(|m| bad("llm", m))?;
        let kind = over.provider.unwrap_or(self.provider);
        // A plugin that switches provider does not inherit the node's
        // endpoint or models of the other provider.
        let same = kind == self.provider;
        let base_url = over
            .base_url
            .clone()
            .or_else(|| self.base_url.clone().filter(|_| same))
            .unwrap_or_else(|| default_base_url(kind).to_string());
        let base_url = base_url.trim_end_matches('/').to_string();
        let explicit_env = over
            .api_key_env
            .clone()
            .or_else(|| self.api_key_env.clone().filter(|_| same));
        let key_env = match explicit_env {
            Some(v) => vec![v],
            None => vec![KEY_ENV.to_string(), provider_key_env(kind).to_string()],
        };
        let key_required = self
            .key_required
            .filter(|_| same && over.base_url.is_none())
            .unwrap_or(base_url == default_base_url(kind));
        let mut models = default_models(kind);
        if same {
            models.extend(self.models.clone());
        }
        models.extend(over.models.clone());
        Ok(ProviderConfig {
            endpoint: Endpoint { kind, base_url },
            key_env,
            key_required,
            models,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.unwrap_or(10_000)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.unwrap_or(120_000)),
        })
    }
}

fn check_url(field: &str, u: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(url) => Err(bad(
            field,
            format!(
                "{u:?} must be an http:// or https:// URL (scheme {:?})",
                url.scheme()
            ),
        )),
        Err(e) => Err(bad(field, format!("{u:?} is not a URL: {e}"))),
    }
}

/// The provider's own endpoint.
pub fn default_base_url(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "https://api.anthropic.com",
        ProviderKind::Openai => "https://api.openai.com",
    }
}

/// The provider's conventional key variable.
pub fn provider_key_env(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
        ProviderKind::Openai => "OPENAI_API_KEY",
    }
}

/// Model ids per tier when the configuration names none.
pub fn default_models(kind: ProviderKind) -> BTreeMap<ModelTier, String> {
    let ids = match kind {
        ProviderKind::Anthropic => ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1"],
        ProviderKind::Openai => ["gpt-4.1-nano", "gpt-4.1-mini", "gpt-4.1"],
    };
    [ModelTier::Haiku, ModelTier::Sonnet, ModelTier::Opus]
        .into_iter()
        .zip(ids.map(String::from))
        .collect()
}

/// `haiku=ID,sonnet=ID,opus=ID` (the `--llm-model-map` flag); any subset.
pub fn parse_model_map(s: &str) -> Result<BTreeMap<ModelTier, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (tier, id) = pair
            .split_once('=')
            .ok_or_else(|| bad("--llm-model-map", format!("{pair:?} is not TIER=MODEL_ID")))?;
        let t = match tier.trim() {
            "haiku" => ModelTier::Haiku,
            "sonnet" => ModelTier::Sonnet,
            "opus" => ModelTier::Opus,
            other => {
                return Err(bad(
                    "--llm-model-map",
                    format!("unknown tier {other:?} (haiku, sonnet or opus)"),
                ))
            }
        };
        if id.trim().is_empty() {
            return Err(bad("--llm-model-map", format!("{tier} has no model id")));
        }
        out.insert(t, id.trim().to_string());
    }
    Ok(out)
}

/// One provider endpoint as a plugin uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub endpoint: Endpoint,
    /// Where the key is read from, in order.
    pub key_env: Vec<String>,
    /// Refuse to call without a key.
    pub key_required: bool,
    /// Model id of each tier.
    pub models: BTreeMap<ModelTier, String>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ProviderConfig {
    /// The model id of a tier.
    pub fn model(&self, tier: ModelTier) -> &str {
        self.models
            .get(&tier)
            .map(String::as_str)
            .unwrap_or("unknown")
    }

    /// The tier a model id is configured for, if any.
    pub fn tier_of(&self, model: &str) -> Option<ModelTier> {
        self.models
            .iter()
            .find(|(_, id)| id.as_str() == model)
            .map(|(t, _)| *t)
    }

    /// The key variables as an error names them.
    pub fn key_env_names(&self) -> String {
        self.key_env.join(" or ")
    }

    /// Read the key from the environment now. A missing key is an
    /// [`ProviderError::Auth`] when the endpoint requires one.
    pub fn api_key(&self) -> Result<Option<ApiKey>, ProviderError> {
        for v in &self.key_env {
            if let Ok(k) = std::env::var(v) {
                let k = k.trim();
                if !k.is_empty() {
                    return Ok(Some(ApiKey::new(k)));
                }
            }
        }
        if self.key_required {
            return Err(ProviderError::Auth {
                endpoint: self.endpoint.clone(),
                env: self.key_env_names(),
                message: "no key: the variable is not set".into(),
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_provider_and_a_plugin_override_merges_over_the_node() {
        let node = LlmConfig::from_toml(
            "provider = \"openai\"\nbase_url = \"http://127.0.0.1:8080/\"\n[models]\nhaiku = \"small\"\nsonnet = \"mid\"\n",
        )
        .unwrap();
        let p = node.resolve(None).unwrap();
        assert_eq!(p.endpoint.base_url, "http://127.0.0.1:8080");
        assert_eq!(p.model(ModelTier::Haiku), "small");
        assert_eq!(p.model(ModelTier::Opus), "gpt-4.1");
        assert_eq!(p.key_env, vec!["PLEXUS_LLM_API_KEY", "OPENAI_API_KEY"]);
        assert!(!p.key_required, "a local endpoint takes no key by default");

        let over = LlmSpec {
            api_key_env: Some("JIRA_LLM_KEY".into()),
            models: [(ModelTier::Sonnet, "big".to_string())].into(),
            ..Default::default()
        };
        let p = node.resolve(Some(&over)).unwrap();
        assert_eq!(p.model(ModelTier::Haiku), "small");
        assert_eq!(p.model(ModelTier::Sonnet), "big");
        assert_eq!(p.key_env, vec!["JIRA_LLM_KEY"]);
        assert_eq!(p.tier_of("big"), Some(ModelTier::Sonnet));

        // Switching provider drops the node's endpoint and models.
        let over = LlmSpec {
            provider: Some(ProviderKind::Anthropic),
            ..Default::default()
        };
        let p = node.resolve(Some(&over)).unwrap();
        assert_eq!(p.endpoint.base_url, "https://api.anthropic.com");
        assert_eq!(p.model(ModelTier::Haiku), "claude-haiku-4-5");
        assert_eq!(p.key_env, vec!["PLEXUS_LLM_API_KEY", "ANTHROPIC_API_KEY"]);
        assert!(p.key_required);
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = LlmConfig::from_toml("provider = \"gemini\"\n").unwrap_err();
        assert!(e.message.contains("line 1"), "{e}");
        let e = LlmConfig::from_toml("provider = \"openai\"\nbase_url = \"localhost:80\"\n")
            .unwrap_err();
        assert_eq!(e.field, "llm.base_url", "{e}");
        let e = LlmConfig::from_toml(
            "provider = \"openai\"\napi_key_env = \"sk-proj-abcdefghijklmnop\"\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "llm.api_key_env");
        assert!(
            !e.to_string().contains("abcdefghijklmnop"),
            "a key pasted by mistake is not echoed: {e}"
        );
        let e = LlmConfig::from_toml("provider = \"openai\"\nbase = \"x\"\n").unwrap_err();
        assert!(e.message.contains("base"), "{e}");
        let e =
            LlmConfig::from_toml("provider = \"openai\"\n[models]\nopus = \" \"\n").unwrap_err();
        assert_eq!(e.field, "llm.models.opus");
        assert_eq!(
            parse_model_map("haiku=a, opus=c").unwrap(),
            [
                (ModelTier::Haiku, "a".to_string()),
                (ModelTier::Opus, "c".to_string())
            ]
            .into()
        );
        assert!(parse_model_map("tiny=a")
            .unwrap_err()
            .to_string()
            .contains("tiny"));
        assert!(parse_model_map("haiku").is_err());
    }

    #[test]
    fn a_missing_required_key_names_the_variables_and_a_set_one_is_read_at_use() {
        let mut p = LlmConfig::new(ProviderKind::Anthropic)
            .resolve(None)
            .unwrap();
        p.key_env = vec![
            "PLEXUS_TEST_KEY_UNSET_1".into(),
            "PLEXUS_TEST_KEY_UNSET_2".into(),
        ];
        let e = p.api_key().unwrap_err();
        assert_eq!(e.kind(), "auth");
        let s = e.to_string();
        assert!(
            s.contains("PLEXUS_TEST_KEY_UNSET_1 or PLEXUS_TEST_KEY_UNSET_2")
                && s.contains("anthropic"),
            "{s}"
        );
        p.key_required = false;
        assert_eq!(p.api_key().unwrap(), None);
        // SAFETY: a variable only this test uses.
        unsafe { std::env::set_var("PLEXUS_TEST_KEY_SET", "sk-test-1") };
        p.key_env = vec!["PLEXUS_TEST_KEY_SET".into()];
        let k = p.api_key().unwrap().unwrap();
        assert_eq!(k.expose(), "sk-test-1");
        assert!(!format!("{p:?} {k:?}").contains("sk-test-1"));
    }
}

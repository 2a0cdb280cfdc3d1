//! Who may publish what: the bus's source check for plugins.
//!
//! A plugin publishes only as itself (`source` = its name) and only on its
//! own `plugin/{name}/**` topics or a topic its manifest declares
//! (`communication.topics`, wildcards allowed). The node publishes on a
//! plugin's behalf through [`crate::Bus::publish_as`], which refuses and
//! audits anything else.

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::topic::{matches, validate_pattern, TopicError};

/// What one plugin may publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPolicy {
    plugin: String,
    patterns: Vec<String>,
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Violation {
    #[error("plugin {plugin} tried to publish as {claimed:?} (a plugin publishes only as itself)")]
    ForgedSource { plugin: String, claimed: String },
    #[error("plugin {plugin} may not publish on {topic:?}: its manifest declares {allowed:?}")]
    TopicNotDeclared {
        plugin: String,
        topic: String,
        allowed: Vec<String>,
    },
}

impl PublishPolicy {
    /// The policy of `plugin` with the topic patterns its manifest declares.
    /// Patterns that are not valid are left out and returned with why.
    pub fn new(plugin: &str, declared: &[String]) -> (PublishPolicy, Vec<(String, TopicError)>) {
        let mut patterns = vec![format!("plugin/{plugin}/**")];
        let mut bad = vec![];
        for p in declared {
            match validate_pattern(p) {
                Ok(()) => patterns.push(p.clone()),
                Err(e) => bad.push((p.clone(), e)),
            }
        }
        (
            PublishPolicy {
                plugin: plugin.to_string(),
                patterns,
            },
            bad,
        )
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The patterns the plugin may publish on.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `env` may be published by this plugin.
    pub fn check(&self, env: &Envelope) -> Result<(), Violation> {
        if env.source != self.plugin {
            return Err(Violation::ForgedSource {
                plugin: self.plugin.clone(),
                claimed: env.source.to_string(),
            });
        }
        if !self.patterns.iter().any(|p| matches(p, &env.topic)) {
            return Err(Violation::TopicNotDeclared {
                plugin: self.plugin.clone(),
                topic: env.topic.to_string(),
                allowed: self.patterns.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MessageKind;

    fn env(topic: &str, source: &str) -> Envelope {
        Envelope::new(MessageKind::Event, topic, source, vec![])
    }

    #[test]
    fn a_plugin_publishes_only_as_itself_on_declared_topics() {
        let (p, bad) = PublishPolicy::new(
            "kv",
            &[
                "system/telemetry".into(),
                "orders/*".into(),
                "bad//x".into(),
            ],
        );
        assert_eq!(bad.len(), 1);
        assert!(p.check(&env("plugin/kv/events", "kv")).is_ok());
        assert!(p.check(&env("plugin/kv/a/b", "kv")).is_ok());
        assert!(p.check(&env("system/telemetry", "kv")).is_ok());
        assert!(p.check(&env("orders/new", "kv")).is_ok());
        assert!(matches!(
            p.check(&env("plugin/kv/events", "jira-orchestrator")),
            Err(Violation::ForgedSource { claimed, .. }) if claimed == "jira-orchestrator"
        ));
        assert!(matches!(
            p.check(&env("plugin/other/events", "kv")),
            Err(Violation::TopicNotDeclared { .. })
        ));
        assert!(matches!(
            p.check(&env("system/alerts", "kv")),
            Err(Violation::TopicNotDeclared { .. })
        ));
    }
}

//! Graceful degradation: the order in which a failed call falls back.
//!
//! The plan is primary plugin, then the manifest's fallback plugins in
//! order (any whose breaker is Open is skipped), then the cached result,
//! then the default result. The executor walks the plan and stops at the
//! first step that yields a result; retries (see [`crate::retry`]) happen
//! inside a plugin step. The result says which path served it with
//! [`ServedBy`].
//!
//! ```
//! use plexus_resilience::breaker::BreakerState;
//! use plexus_resilience::degradation::{Degradation, PlanStep};
//!
//! let plan = Degradation::default().plan("weather", &["weather-b", "weather-c"], |p| {
//!     (p == "weather-b").then_some(BreakerState::Open)
//! });
//! assert_eq!(
//!     plan.steps,
//!     [
//!         PlanStep::Primary("weather".into()),
//!         PlanStep::Fallback("weather-c".into()),
//!         PlanStep::Cache,
//!         PlanStep::Default,
//!     ]
//! );
//! assert_eq!(plan.skipped, ["weather-b"]);
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::breaker::BreakerState;

/// Which degradation steps exist besides plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Degradation {
    /// Try the result cache after the plugins.
    pub use_cache: bool,
    /// Fall back to a default result last.
    pub use_default: bool,
}

impl Default for Degradation {
    fn default() -> Self {
        Degradation {
            use_cache: true,
            use_default: true,
        }
    }
}

/// One thing to try.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PlanStep {
    Primary(String),
    Fallback(String),
    Cache,
    Default,
}

impl PlanStep {
    /// The plugin this step calls, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            PlanStep::Primary(p) | PlanStep::Fallback(p) => Some(p),
            PlanStep::Cache | PlanStep::Default => None,
        }
    }

    /// What a result from this step reports, `retries` being how many
    /// retries it took (only the primary reports them as [`ServedBy::Retry`]).
    pub fn served_by(&self, retries: u32) -> ServedBy {
        match self {
            PlanStep::Primary(_) if retries > 0 => ServedBy::Retry(retries),
            PlanStep::Primary(_) => ServedBy::Primary,
            PlanStep::Fallback(p) => ServedBy::Fallback(p.clone()),
            PlanStep::Cache => ServedBy::Cache,
            PlanStep::Default => ServedBy::Default,
        }
    }
}

/// The ordered steps, and the plugins left out because their breaker was
/// open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    pub skipped: Vec<String>,
}

impl Degradation {
    /// Plans a call. `breaker_state(plugin)` gives the plugin's breaker state
    /// as of now (use [`CircuitBreaker::state_at`](crate::breaker::CircuitBreaker::state_at)
    /// so an Open breaker whose wait has elapsed counts as HalfOpen), or
    /// `None` for a plugin without a breaker. Open and ForcedOpen plugins are
    /// skipped, the primary included; a plugin named twice is tried once.
    pub fn plan<S, F>(&self, primary: &str, fallbacks: &[S], mut breaker_state: F) -> Plan
    where
        S: AsRef<str>,
        F: FnMut(&str) -> Option<BreakerState>,
    {
        let mut steps = Vec::with_capacity(fallbacks.len() + 3);
        let mut skipped = Vec::new();
        let mut seen: Vec<&str> = Vec::with_capacity(fallbacks.len() + 1);
        let candidates =
            std::iter::once((primary, true)).chain(fallbacks.iter().map(|f| (f.as_ref(), false)));
        for (plugin, is_primary) in candidates {
            if seen.contains(&plugin) {
                continue;
            }
            seen.push(plugin);
            if breaker_state(plugin).is_some_and(BreakerState::is_open) {
                skipped.push(plugin.to_owned());
            } else if is_primary {
                steps.push(PlanStep::Primary(plugin.to_owned()));
            } else {
                steps.push(PlanStep::Fallback(plugin.to_owned()));
            }
        }
        if self.use_cache {
            steps.push(PlanStep::Cache);
        }
        if self.use_default {
            steps.push(PlanStep::Default);
        }
        Plan { steps, skipped }
    }
}

/// Which path produced a result. Displays and serializes as `primary`,
/// `retry:N`, `fallback:PLUGIN`, `cache` or `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServedBy {
    Primary,
    /// The primary, after this many retries.
    Retry(u32),
    Fallback(String),
    Cache,
    Default,
}

impl fmt::Display for ServedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServedBy::Primary => f.write_str("primary"),
            ServedBy::Retry(n) => write!(f, "retry:{n}"),
            ServedBy::Fallback(p) => write!(f, "fallback:{p}"),
            ServedBy::Cache => f.write_str("cache"),
            ServedBy::Default => f.write_str("default"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a served-by value: {0:?}")]
pub struct ParseServedByError(String);

impl FromStr for ServedBy {
    type Err = ParseServedByError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseServedByError(s.to_owned());
        match s {
            "primary" => Ok(ServedBy::Primary),
            "cache" => Ok(ServedBy::Cache),
            "default" => Ok(ServedBy::Default),
            _ => match s.split_once(':') {
                Some(("retry", n)) => n.parse().map(ServedBy::Retry).map_err(|_| err()),
                Some(("fallback", p)) if !p.is_empty() => Ok(ServedBy::Fallback(p.to_owned())),
                _ => Err(err()),
            },
        }
    }
}

impl Serialize for ServedBy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServedBy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_breakers(_: &str) -> Option<BreakerState> {
        None
    }

    #[test]
    fn full_order_when_all_closed() {
        let plan = Degradation::default().plan("a", &["b", "c"], no_breakers);
        assert_eq!(
            plan.steps,
            [
                PlanStep::Primary("a".into()),
                PlanStep::Fallback("b".into()),
                PlanStep::Fallback("c".into()),
                PlanStep::Cache,
                PlanStep::Default,
            ]
        );
        assert!(plan.skipped.is_empty());
    }

    #[test]
    fn skips_open_and_forced_open_keeps_half_open() {
        let states = |p: &str| match p {
            "a" => Some(BreakerState::Open),
            "b" => Some(BreakerState::HalfOpen),
            "c" => Some(BreakerState::ForcedOpen),
            "d" => Some(BreakerState::Closed),
            _ => None,
        };
        let fallbacks = vec!["b".to_string(), "c".into(), "d".into(), "e".into()];
        let plan = Degradation::default().plan("a", &fallbacks, states);
        assert_eq!(
            plan.steps,
            [
                PlanStep::Fallback("b".into()),
                PlanStep::Fallback("d".into()),
                PlanStep::Fallback("e".into()),
                PlanStep::Cache,
                PlanStep::Default,
            ]
        );
        assert_eq!(plan.skipped, ["a", "c"]);
    }

    #[test]
    fn duplicates_tried_once_and_optional_tail() {
        let d = Degradation {
            use_cache: false,
            use_default: false,
        };
        let plan = d.plan("a", &["b", "a", "b"], no_breakers);
        assert_eq!(
            plan.steps,
            [
                PlanStep::Primary("a".into()),
                PlanStep::Fallback("b".into())
            ]
        );
        let plan = d.plan("a", &[] as &[&str], |_| Some(BreakerState::Open));
        assert!(plan.steps.is_empty());
        assert_eq!(plan.skipped, ["a"]);
    }

    #[test]
    fn served_by_from_step() {
        assert_eq!(
            PlanStep::Primary("a".into()).served_by(0),
            ServedBy::Primary
        );
        assert_eq!(
            PlanStep::Primary("a".into()).served_by(2),
            ServedBy::Retry(2)
        );
        assert_eq!(
            PlanStep::Fallback("b".into()).served_by(1),
            ServedBy::Fallback("b".into())
        );
        assert_eq!(PlanStep::Cache.served_by(0), ServedBy::Cache);
        assert_eq!(PlanStep::Default.plugin(), None);
    }

    #[test]
    fn served_by_display_parse_serde() {
        let all = [
            (ServedBy::Primary, "primary"),
            (ServedBy::Retry(3), "retry:3"),
            (
                ServedBy::Fallback("weather:eu".into()),
                "fallback:weather:eu",
            ),
            (ServedBy::Cache, "cache"),
            (ServedBy::Default, "default"),
        ];
        for (v, s) in all {
            assert_eq!(v.to_string(), s);
            assert_eq!(s.parse::<ServedBy>().unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ServedBy>(&json).unwrap(), v);
        }
        for bad in ["", "retry:x", "fallback:", "Primary", "retry"] {
            assert!(bad.parse::<ServedBy>().is_err(), "{bad}");
        }
    }
}

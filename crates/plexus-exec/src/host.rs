//! Which node takes one try: a pure function of the directory's view of
//! the plugin's hosts, so the choice that admits a call is the choice that
//! sends it (the bus does not pick again).

/// One node that hosts the plugin, as the directory sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub node: String,
    pub state: HostState,
}

/// Whether a host can take a call now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    /// Its node is up, the plugin is available and its breaker lets calls in.
    Usable,
    /// Up and available, but its breaker refuses calls.
    BreakerOpen,
    /// Why it cannot take calls (node down, plugin failed or restarting).
    Unavailable(String),
}

/// The outcome of [`choose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Host(String),
    /// Every host that is up has its breaker open (nodes named).
    BreakerOpen(Vec<String>),
    /// No host can take it; why, per host.
    Unavailable(Vec<String>),
}

/// Pick the host of one try: this node when it is usable (no hop), else
/// the usable remote hosts in turn (`turn` spreads the load). Hosts in
/// `exclude` (their breaker refused this call a moment ago) are skipped.
pub fn choose(hosts: &[HostView], local: &str, exclude: &[String], turn: usize) -> Choice {
    let open = |h: &&HostView| !exclude.contains(&h.node);
    let usable: Vec<&HostView> = hosts
        .iter()
        .filter(open)
        .filter(|h| h.state == HostState::Usable)
        .collect();
    if let Some(h) = usable.iter().find(|h| h.node == local) {
        return Choice::Host(h.node.clone());
    }
    if !usable.is_empty() {
        return Choice::Host(usable[turn % usable.len()].node.clone());
    }
    let broken: Vec<String> = hosts
        .iter()
        .filter(|h| h.state == HostState::BreakerOpen || exclude.contains(&h.node))
        .map(|h| h.node.clone())
        .collect();
    if !broken.is_empty() {
        return Choice::BreakerOpen(broken);
    }
    Choice::Unavailable(
        hosts
            .iter()
            .map(|h| match &h.state {
                HostState::Unavailable(why) => why.clone(),
                _ => format!("{} cannot take calls", h.node),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(node: &str, state: HostState) -> HostView {
        HostView {
            node: node.into(),
            state,
        }
    }

    #[test]
    fn a_local_host_behind_an_open_breaker_yields_to_a_healthy_remote_one() {
        let hosts = [h("a", HostState::BreakerOpen), h("b", HostState::Usable)];
        assert_eq!(choose(&hosts, "a", &[], 0), Choice::Host("b".into()));
    }

    #[test]
    fn a_usable_local_host_is_preferred_and_remotes_take_turns() {
        let hosts = [
            h("a", HostState::Usable),
            h("b", HostState::Usable),
            h("c", HostState::Usable),
        ];
        assert_eq!(choose(&hosts, "b", &[], 7), Choice::Host("b".into()));
        let picks: Vec<Choice> = (0..4).map(|t| choose(&hosts, "x", &[], t)).collect();
        assert_eq!(
            picks,
            ["a", "b", "c", "a"]
                .map(|n| Choice::Host(n.into()))
                .to_vec()
        );
    }

    #[test]
    fn hosts_that_refused_are_skipped_then_named_as_open() {
        let hosts = [h("a", HostState::Usable), h("b", HostState::Usable)];
        assert_eq!(
            choose(&hosts, "a", &["a".into()], 0),
            Choice::Host("b".into())
        );
        assert_eq!(
            choose(&hosts, "a", &["a".into(), "b".into()], 0),
            Choice::BreakerOpen(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn no_host_says_why_for_each() {
        let hosts = [
            h("a", HostState::Unavailable("its node a is down".into())),
            h("b", HostState::Unavailable("on b it is failed".into())),
        ];
        assert_eq!(
            choose(&hosts, "a", &[], 0),
            Choice::Unavailable(vec![
                "its node a is down".into(),
                "on b it is failed".into()
            ])
        );
        assert_eq!(choose(&[], "a", &[], 0), Choice::Unavailable(vec![]));
    }
}

//! In-process: a state change on a node is published on the bus, on the
//! key's topic, for plugins to subscribe to.

use std::time::Duration;

use plexus_catalog::Catalog;
use plexus_node::config::{FileConfig, NodeSection};
use plexus_node::testkit::{StateMsg, WriteOp, WriteReq};
use plexus_state::{topic_for, Consistency, StateEvent};
use ractor::ActorRef;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_is_published_on_its_key_topic() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileConfig {
        node: NodeSection {
            name: Some("ev1".into()),
            listen: Some("127.0.0.1:0".into()),
            api: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().join("ev1")),
            plugins: Some(vec![]),
            ..Default::default()
        },
        ..Default::default()
    }
    .finish()
    .unwrap();
    let node = plexus_node::start(config, Catalog::default())
        .await
        .unwrap();
    let sub = node
        .ctx
        .bus
        .subscribe("state/changes/**", "watcher")
        .unwrap();
    let cell = ractor::registry::where_is(String::from("ev1:state")).expect("state actor");
    let state: ActorRef<StateMsg> = cell.into();
    let req = WriteReq {
        plugin: "alpha".into(),
        by: String::new(),
        key: "jobs/7".into(),
        op: WriteOp::Put(serde_json::json!({"done": true})),
        access: None,
        ttl_ms: None,
        kind: None,
        field: None,
        consistency: Consistency::Local,
        timeout: Duration::from_secs(1),
    };
    let done = state
        .call(|r| StateMsg::Write(req, r), Some(Duration::from_secs(5)))
        .await
        .unwrap()
        .success_or(())
        .unwrap()
        .unwrap();
    assert_eq!(done.acks, 1);
    let env = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("an event")
        .expect("open subscription");
    assert_eq!(env.topic, topic_for("jobs/7"));
    let ev: StateEvent = serde_json::from_slice(&env.payload).unwrap();
    assert_eq!(ev.key, "jobs/7");
    assert_eq!(ev.author.as_deref(), Some("alpha"));
    assert_eq!(ev.node, "ev1");
    node.shutdown().await;
}

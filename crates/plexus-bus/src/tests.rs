use super::*;
use std::sync::Mutex as StdMutex;

fn ev(topic: &str) -> Envelope {
    Envelope::new(MessageKind::Event, topic, "tester", b"{}".to_vec())
}

#[tokio::test]
async fn pubsub_with_wildcards() {
    let bus = Bus::new(BusConfig::new("n1"));
    let a = bus.subscribe("plugin/*/events", "a").unwrap();
    let b = bus.subscribe("plugin/**", "b").unwrap();
    let c = bus.subscribe("system/health", "c").unwrap();
    let r = bus.publish(ev("plugin/jira/events")).unwrap();
    assert_eq!(r.local, 2);
    assert_eq!(a.recv().await.unwrap().topic, "plugin/jira/events");
    assert_eq!(b.recv().await.unwrap().topic, "plugin/jira/events");
    assert!(c.try_recv().is_none());
}

#[tokio::test]
async fn higher_priority_is_delivered_first_from_a_backlog() {
    let bus = Bus::new(BusConfig::new("n1"));
    let s = bus.subscribe("t", "s").unwrap();
    for p in [1u8, 9, 5, 9, 10] {
        bus.publish(ev("t").with_priority(p)).unwrap();
    }
    let got: Vec<u8> = (0..5).map(|_| s.try_recv().unwrap().priority).collect();
    assert_eq!(got, vec![10, 9, 9, 5, 1]);
}

#[test]
fn bad_input_is_refused() {
    let bus = Bus::new(BusConfig::new("n1"));
    assert!(matches!(bus.publish(ev("a/*")), Err(BusError::Topic(_))));
    assert!(matches!(
        bus.publish(ev("a").with_priority(0)),
        Err(BusError::Priority(0))
    ));
    assert!(matches!(
        bus.publish(ev("a").with_priority(11)),
        Err(BusError::Priority(11))
    ));
    let mut big = ev("a");
    big.payload = vec![0; 2 * 1024 * 1024];
    assert!(matches!(
        bus.publish(big),
        Err(BusError::PayloadTooLarge { .. })
    ));
    assert!(bus.subscribe("a/b*", "x").is_err());
}

#[tokio::test]
async fn undeliverable_and_expired_become_dead_letters() {
    let bus = Bus::new(BusConfig::new("n1"));
    // A command with no subscriber.
    let cmd = Envelope::new(MessageKind::Command, "plugin/x/request", "t", vec![]);
    assert!(bus.publish(cmd).unwrap().dead_lettered);
    // An event with no subscriber is not a dead letter (pub/sub semantics)...
    assert!(!bus.publish(ev("nobody/listens")).unwrap().dead_lettered);
    // ...unless it is addressed to someone.
    assert!(
        bus.publish(ev("nobody/listens").to("ghost"))
            .unwrap()
            .dead_lettered
    );
    // Expired.
    let _s = bus.subscribe("t", "s").unwrap();
    let mut e = ev("t");
    e.metadata.expires_at_ms = Some(1);
    assert!(bus.publish(e).unwrap().dead_lettered);
    let dl = bus.dead_letters(10);
    assert_eq!(dl.len(), 3);
    assert!(dl[2].reason.contains("expired"));
    assert_eq!(bus.stats().dead_lettered, 3);
}

#[tokio::test]
async fn full_mailbox_dead_letters_instead_of_growing() {
    let mut cfg = BusConfig::new("n1");
    cfg.mailbox_capacity = 2;
    let bus = Bus::new(cfg);
    let _s = bus.subscribe("t", "slow").unwrap();
    for _ in 0..5 {
        bus.publish(ev("t")).unwrap();
    }
    assert_eq!(bus.stats().dead_lettered, 3);
    assert!(bus.dead_letters(1)[0].reason.contains("full"));
}

#[tokio::test]
async fn request_response_locally_with_correlation() {
    let bus = Bus::new(BusConfig::new("n1"));
    let server = bus.subscribe("svc/echo", "echo").unwrap();
    let b2 = bus.clone();
    tokio::spawn(async move {
        while let Some(req) = server.recv().await {
            let resp = req.reply("echo", req.payload.clone());
            b2.respond(&req, resp).unwrap();
        }
    });
    let req = Envelope::new(MessageKind::Request, "svc/echo", "client", b"hi".to_vec());
    let id = req.message_id;
    let resp = bus.request(req, Duration::from_secs(1)).await.unwrap();
    assert_eq!(resp.correlation_id, Some(id));
    assert_eq!(resp.payload, b"hi");
}

#[tokio::test]
async fn request_without_responder_fails_fast_and_timeout_is_reported() {
    let bus = Bus::new(BusConfig::new("n1"));
    let req = Envelope::new(MessageKind::Request, "svc/none", "client", vec![]);
    assert!(matches!(
        bus.request(req, Duration::from_secs(5)).await,
        Err(BusError::NoRoute { .. })
    ));
    let _silent = bus.subscribe("svc/silent", "silent").unwrap();
    let req = Envelope::new(MessageKind::Request, "svc/silent", "client", vec![]);
    assert!(matches!(
        bus.request(req, Duration::from_millis(20)).await,
        Err(BusError::Timeout { .. })
    ));
    assert_eq!(bus.stats().pending_requests, 0);
}

/// Two buses joined by an in-memory link, as the node layer joins them.
struct Link {
    peers: StdMutex<HashMap<String, Bus>>,
    me: String,
}

impl RemoteSink for Link {
    fn send(&self, node: &str, frame: BusFrame) -> Result<(), String> {
        let peer = self.peers.lock().unwrap().get(node).cloned();
        match peer {
            Some(b) => {
                b.handle_frame(&self.me, frame);
                Ok(())
            }
            None => Err("unknown node".into()),
        }
    }
    fn interest_changed(&self, interest: Vec<(String, String)>) {
        let peers: Vec<Bus> = self.peers.lock().unwrap().values().cloned().collect();
        for p in peers {
            p.handle_frame(&self.me, BusFrame::Interest(interest.clone()));
        }
    }
}

fn pair() -> (Bus, Bus) {
    let a = Bus::new(BusConfig::new("a"));
    let b = Bus::new(BusConfig::new("b"));
    let la = Arc::new(Link {
        peers: StdMutex::new(HashMap::from([("b".to_string(), b.clone())])),
        me: "a".into(),
    });
    let lb = Arc::new(Link {
        peers: StdMutex::new(HashMap::from([("a".to_string(), a.clone())])),
        me: "b".into(),
    });
    a.set_remote_sink(la);
    b.set_remote_sink(lb);
    (a, b)
}

#[tokio::test]
async fn cross_node_pubsub_forwards_only_to_interested_nodes() {
    let (a, b) = pair();
    let sub = b.subscribe("plugin/*/events", "listener").unwrap();
    assert_eq!(a.nodes_interested_in("plugin/x/events"), vec!["b"]);
    assert!(a.nodes_interested_in("other/topic").is_empty());
    let r = a.publish(ev("plugin/x/events")).unwrap();
    assert_eq!(r.remote_nodes, vec!["b".to_string()]);
    let got = sub.recv().await.unwrap();
    assert_eq!(got.source_node, "a");
    // Not interested: not forwarded.
    let r = a.publish(ev("other/topic")).unwrap();
    assert!(r.remote_nodes.is_empty());
    // Unsubscribing withdraws interest.
    drop(sub);
    let r = a.publish(ev("plugin/x/events")).unwrap();
    assert!(r.remote_nodes.is_empty());
}

#[tokio::test]
async fn cross_node_request_response() {
    let (a, b) = pair();
    let server = b.subscribe("plugin/p/request", "p").unwrap();
    let bb = b.clone();
    tokio::spawn(async move {
        while let Some(req) = server.recv().await {
            let resp = req.reply("p", b"done".to_vec());
            bb.respond(&req, resp).unwrap();
        }
    });
    let req = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
    let resp = a.request(req, Duration::from_secs(1)).await.unwrap();
    assert_eq!(resp.payload, b"done");
    assert_eq!(resp.source_node, "b");
    // Peer down: its interest is forgotten and requests fail fast.
    a.peer_down("b");
    let req = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
    assert!(matches!(
        a.request(req, Duration::from_secs(1)).await,
        Err(BusError::NoRoute { .. })
    ));
}

#[tokio::test]
async fn a_request_in_flight_fails_at_once_when_its_node_goes_down() {
    let (a, b) = pair();
    // b takes the request and never answers.
    let server = b.subscribe("plugin/p/request", "p").unwrap();
    let req = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
    let aa = a.clone();
    let waiting = tokio::spawn(async move { aa.request(req, Duration::from_secs(30)).await });
    let got = server.recv().await.unwrap();
    assert_eq!(got.source_node, "a");
    let started = std::time::Instant::now();
    assert_eq!(a.peer_down("b"), 1);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the request still waits after peer_down")
        .unwrap();
    match r {
        Err(BusError::PeerDown { node, topic }) => {
            assert_eq!(node, "b");
            assert_eq!(topic, "plugin/p/request");
        }
        other => panic!("expected PeerDown, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(a.stats().pending_requests, 0);
    // Another node going down does not touch a request to b.
    let (a, b) = pair();
    let server = b.subscribe("plugin/p/request", "p").unwrap();
    let (took_tx, took_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let bb = b.clone();
    tokio::spawn(async move {
        let req = server.recv().await.unwrap();
        let _ = took_tx.send(());
        let _ = go_rx.await;
        bb.respond(&req, req.reply("p", b"late but fine".to_vec()))
            .unwrap();
    });
    let aa = a.clone();
    let waiting = tokio::spawn(async move {
        let req = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
        aa.request(req, Duration::from_secs(5)).await
    });
    took_rx.await.unwrap();
    assert_eq!(a.peer_down("c"), 0);
    go_tx.send(()).unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().payload, b"late but fine");
}

#[tokio::test]
async fn late_response_is_a_dead_letter() {
    let bus = Bus::new(BusConfig::new("n1"));
    let req = Envelope::new(MessageKind::Request, "x", "c", vec![]);
    let resp = req.reply("s", vec![]);
    bus.respond(&req, resp).unwrap();
    assert!(bus.dead_letters(1)[0].reason.contains("no pending request"));
}

#[tokio::test]
async fn a_forged_source_or_undeclared_topic_is_rejected_and_audited() {
    let bus = Bus::new(BusConfig::new("n1"));
    let sub = bus.subscribe("**", "watcher").unwrap();
    let (policy, _) = PublishPolicy::new("kv", &["system/telemetry".into()]);
    let ok = Envelope::new(MessageKind::Event, "plugin/kv/events", "kv", vec![]);
    assert_eq!(bus.publish_as(&policy, ok).unwrap().local, 1);
    let forged = Envelope::new(MessageKind::Event, "plugin/kv/events", "jira", vec![]);
    assert!(matches!(
        bus.publish_as(&policy, forged),
        Err(BusError::Forbidden(Violation::ForgedSource { .. }))
    ));
    let undeclared = Envelope::new(MessageKind::Event, "system/alerts", "kv", vec![]);
    assert!(matches!(
        bus.publish_as(&policy, undeclared),
        Err(BusError::Forbidden(Violation::TopicNotDeclared { .. }))
    ));
    // Only the allowed one was delivered; the others are audited.
    assert!(sub.try_recv().is_some());
    assert!(sub.try_recv().is_none());
    assert_eq!(bus.stats().rejected, 2);
    let dl = bus.dead_letters(10);
    assert_eq!(dl.len(), 2);
    assert!(dl.iter().all(|d| d.reason.starts_with("rejected:")));
    assert!(dl[0].reason.contains("\"jira\""), "{}", dl[0].reason);
}

#[tokio::test]
async fn a_peer_cannot_forward_a_message_as_another_node() {
    let bus = Bus::new(BusConfig::new("n1"));
    let sub = bus.subscribe("t", "s").unwrap();
    let mut env = ev("t");
    env.source_node = "n3".into();
    bus.handle_frame("n2", BusFrame::Publish(env.clone()));
    assert!(sub.try_recv().is_none());
    assert_eq!(bus.stats().rejected, 1);
    env.source_node = "n2".into();
    bus.handle_frame("n2", BusFrame::Publish(env));
    assert!(sub.try_recv().is_some());
}

#[tokio::test]
async fn recv_many_takes_a_batch_in_priority_order_and_skips_expired() {
    let bus = Bus::new(BusConfig::new("n1"));
    let s = bus.subscribe("t", "s").unwrap();
    for p in [1u8, 9, 5] {
        bus.publish(ev("t").with_priority(p)).unwrap();
    }
    let mut stale = ev("t").with_priority(10);
    stale.metadata.expires_at_ms = Some(now_ms() + 30);
    bus.publish(stale).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut buf = Vec::new();
    // The first batch takes the expired message and 9; only 9 is returned.
    assert_eq!(s.recv_many(&mut buf, 2).await, 1);
    assert_eq!(s.recv_many(&mut buf, 10).await, 2);
    let got: Vec<u8> = buf.iter().map(|e| e.priority).collect();
    assert_eq!(got, vec![9, 5, 1]);
    assert_eq!(bus.stats().dead_lettered, 1);
    assert_eq!(s.backlog(), 0);
}

#[tokio::test]
async fn envelopes_stamp_time_and_trace_without_changing_their_encoding() {
    let before = now_ms();
    let e = ev("plugin/a/events");
    assert!(e.timestamp_ms >= before && e.timestamp_ms <= now_ms());
    let trace = e.headers.trace_id.as_deref().unwrap();
    assert_eq!(trace, e.message_id.simple().to_string());
    let span = e.headers.span_id.as_deref().unwrap();
    assert_eq!(span.len(), 16);
    assert!(span.bytes().all(|b| b.is_ascii_hexdigit()));
    // The JSON has plain strings, as with `String` fields.
    let v: serde_json::Value = serde_json::to_value(&e).unwrap();
    assert_eq!(v["topic"], "plugin/a/events");
    assert_eq!(v["headers"]["trace_id"], trace);
    let back: Envelope = serde_json::from_value(v).unwrap();
    assert_eq!(back, e);
}

#[tokio::test]
async fn a_request_to_a_chosen_node_goes_there_even_with_a_local_subscriber() {
    let (a, b) = pair();
    // Both nodes serve the topic; a's own subscriber would win a plain request.
    let local = a.subscribe("plugin/p/request", "p").unwrap();
    let remote = b.subscribe("plugin/p/request", "p").unwrap();
    let bb = b.clone();
    tokio::spawn(async move {
        while let Some(req) = remote.recv().await {
            bb.respond(&req, req.reply("p", b"from b".to_vec()))
                .unwrap();
        }
    });
    let req = || Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
    let resp = a
        .request_to(req(), Duration::from_secs(1), "b")
        .await
        .unwrap();
    assert_eq!(
        (resp.payload.as_slice(), resp.source_node.as_str()),
        (&b"from b"[..], "b")
    );
    assert!(
        local.try_recv().is_none(),
        "the local subscriber got nothing"
    );
    // To itself: the local subscriber, never the remote one.
    let aa = a.clone();
    let asking =
        tokio::spawn(async move { aa.request_to(req(), Duration::from_secs(1), "a").await });
    let got = local.recv().await.unwrap();
    a.respond(&got, got.reply("p", b"from a".to_vec())).unwrap();
    assert_eq!(asking.await.unwrap().unwrap().payload, b"from a");
    // A node without the interest: no route, at once.
    assert!(matches!(
        a.request_to(req(), Duration::from_secs(5), "c").await,
        Err(BusError::NoRoute { .. })
    ));
}

/// A stream request on `bus` to node `to`, answered by the subscriber `sub`:
/// the receiver and the responder's sender.
async fn open_stream(
    bus: &Bus,
    responder: &Bus,
    sub: &Subscription,
    window: u32,
) -> (StreamReceiver, StreamSender) {
    let to = responder.node();
    let req = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
    let rx = bus
        .request_stream(req, Duration::from_secs(5), to, window)
        .unwrap();
    let env = sub.recv().await.unwrap();
    let tx = responder.stream_for(&env).expect("a stream request");
    assert!(
        responder.stream_for(&env).unwrap().is_closed(),
        "taken once"
    );
    (rx, tx)
}

/// Whether a send completes without the receiver taking anything (a paused
/// clock: the timeout fires only when nothing else can run).
async fn sends_now(tx: &StreamSender, part: &[u8]) -> bool {
    tokio::time::timeout(Duration::from_millis(10), tx.send(part.to_vec()))
        .await
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn a_local_stream_keeps_order_and_waits_for_a_slow_reader() {
    let bus = Bus::new(BusConfig::new("n1"));
    let sub = bus.subscribe("plugin/p/request", "p").unwrap();
    let (mut rx, tx) = open_stream(&bus, &bus, &sub, 4).await;
    for i in 0..4u8 {
        assert!(sends_now(&tx, &[i]).await, "part {i} fits the window");
    }
    assert!(
        !sends_now(&tx, &[9]).await,
        "a full window makes the sender wait"
    );
    assert_eq!(rx.recv().await, Some(vec![0]));
    assert!(sends_now(&tx, &[4]).await);
    drop(tx);
    let mut got = vec![];
    while let Some(p) = rx.recv().await {
        got.extend(p);
    }
    assert_eq!(
        got,
        vec![1, 2, 3, 4],
        "in order, ended when the sender dropped"
    );
    assert_eq!(
        bus.open_streams(),
        1,
        "the receiver's entry lives until it drops"
    );
    drop(rx);
    assert_eq!(bus.open_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stream_across_nodes_is_paced_by_credits_and_ends_in_order() {
    let (a, b) = pair();
    let sub = b.subscribe("plugin/p/request", "p").unwrap();
    let (mut rx, tx) = open_stream(&a, &b, &sub, 4).await;
    assert_eq!(rx.remote(), Some("b"));
    for i in 0..4u8 {
        assert!(sends_now(&tx, &[i]).await, "part {i} within the credits");
    }
    assert!(
        !sends_now(&tx, &[9]).await,
        "no credit left: the sender waits"
    );
    // Taking half the window hands the credits back.
    assert_eq!(rx.recv().await, Some(vec![0]));
    assert!(!sends_now(&tx, &[9]).await, "credits go back in batches");
    assert_eq!(rx.recv().await, Some(vec![1]));
    assert!(sends_now(&tx, &[4]).await);
    assert!(sends_now(&tx, &[5]).await);
    drop(tx);
    let mut got = vec![];
    while let Some(p) = rx.recv().await {
        got.extend(p);
    }
    assert_eq!(got, vec![2, 3, 4, 5]);
    drop(rx);
    assert_eq!((a.open_streams(), b.open_streams()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_receiver_stops_the_sender_on_the_other_node() {
    let (a, b) = pair();
    let sub = b.subscribe("plugin/p/request", "p").unwrap();
    let (rx, tx) = open_stream(&a, &b, &sub, 4).await;
    assert!(sends_now(&tx, b"x").await);
    drop(rx);
    assert!(tx.is_closed());
    assert_eq!(tx.send(b"y".to_vec()).await, Err(StreamGone));
    // A receiver gone before the responder started: the first part is
    // answered with a cancel.
    let req = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
    let rx = a
        .request_stream(req, Duration::from_secs(5), "b", 4)
        .unwrap();
    drop(rx);
    let tx = b.stream_for(&sub.recv().await.unwrap()).unwrap();
    assert_eq!(tx.send(b"x".to_vec()).await, Ok(()));
    assert_eq!(tx.send(b"y".to_vec()).await, Err(StreamGone));
}

#[tokio::test(start_paused = true)]
async fn a_peer_going_down_ends_its_streams_on_both_sides() {
    let (a, b) = pair();
    let sub = b.subscribe("plugin/p/request", "p").unwrap();
    let (mut rx, tx) = open_stream(&a, &b, &sub, 4).await;
    assert!(sends_now(&tx, b"x").await);
    a.peer_down("b");
    assert_eq!(rx.recv().await, Some(b"x".to_vec()), "what arrived is kept");
    assert_eq!(rx.recv().await, None);
    b.peer_down("a");
    assert_eq!(tx.send(b"y".to_vec()).await, Err(StreamGone));
}

#[tokio::test]
async fn a_local_stream_whose_reader_left_is_closed_for_its_responder() {
    let bus = Bus::new(BusConfig::new("n1"));
    let sub = bus.subscribe("plugin/p/request", "p").unwrap();
    let req = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]).to("p");
    let rx = bus
        .request_stream(req, Duration::from_secs(5), "n1", 4)
        .unwrap();
    drop(rx);
    let env = sub.recv().await.unwrap();
    assert!(bus.stream_for(&env).unwrap().is_closed());
    // A plain request is not a stream request.
    let plain = Envelope::new(MessageKind::Request, "plugin/p/request", "cli", vec![]);
    assert!(bus.stream_for(&plain).is_none());
}

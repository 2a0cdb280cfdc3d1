//! The API under abuse (issue 22): clients that send their headers a byte at
//! a time (a slowloris) are disconnected after the header timeout, and
//! connections past the cap are closed at once and counted, while the node
//! keeps serving.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use plexus_tests::{wait_for, Node, NodeSpec};

fn node(dir: &Path, limits: &str) -> Node {
    let cfg = dir.join("node.toml");
    std::fs::write(&cfg, format!("[limits]\n{limits}\n")).unwrap();
    let spec = NodeSpec {
        name: "solo".into(),
        plugins: vec!["exec-automator".into()],
        catalogs: vec![],
        extra: vec!["--config".into(), cfg.display().to_string()],
    };
    Node::start(spec, dir, "127.0.0.1:0", "127.0.0.1:0", &[])
}

/// A whole GET on a new connection: the status line and the body.
fn get(api: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(api).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    (!buf.is_empty()).then_some(buf)
}

/// Whether the server closed `s` (EOF or reset) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // A 408 or similar before the close is fine.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_slowloris_is_disconnected_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(
        dir.path(),
        "api_header_timeout_ms = 500\napi_max_connections = 64",
    );
    let api = n.api.clone();
    let head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&api).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut w = s.try_clone().unwrap();
                // One byte every 50 ms: the head would take about 5 s.
                let writer = std::thread::spawn(move || {
                    for b in head.iter() {
                        if w.write_all(&[*b]).is_err() {
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    false
                });
                let closed = closed_by_server(&mut s);
                let cut_off = writer.join().unwrap();
                (closed, cut_off)
            })
        })
        .collect();
    // Meanwhile the node answers others.
    let status = get(&api, "/v1/health").expect("health while the slow clients trickle");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    for t in slow {
        let (closed, cut_off) = t.join().unwrap();
        assert!(closed, "a slow client was not disconnected");
        assert!(cut_off, "a slow client could send its whole head");
    }
    let status = get(&api, "/v1/health").unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// Idle connections hold a slot each: one that never sends a request, and
/// one kept alive after its answer, are both closed by the server.
#[test]
fn idle_connections_are_closed_before_and_between_requests() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(
        dir.path(),
        "api_header_timeout_ms = 500\napi_max_connections = 64",
    );
    // 10 s: well past the node's 0.5 s, well short of hyper's own 30 s.
    let mut silent = TcpStream::connect(&n.api).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut kept = TcpStream::connect(&n.api).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(kept, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Read the whole answer (its length is in the head), then stay idle.
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    loop {
        let k = kept.read(&mut b).unwrap();
        assert!(k > 0, "closed before answering");
        got.extend_from_slice(&b[..k]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= len {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                break;
            }
        }
    }
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stayed open"
    );
    assert!(
        closed_by_server(&mut kept),
        "an idle keep-alive connection stayed open"
    );
}

#[test]
fn connections_past_the_cap_are_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(
        dir.path(),
        "api_header_timeout_ms = 60000\napi_max_connections = 4",
    );
    let api = n.api.clone();
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&api).unwrap()).collect();
    // The fifth is accepted by the kernel and closed by the node at once:
    // its request gets no answer.
    let mut extra = TcpStream::connect(&api).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = write!(extra, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed_by_server(&mut extra),
        "a connection past the cap was served"
    );
    drop(idle);
    // Slots come back as the node sees the idle ones go.
    let page = wait_for(Duration::from_secs(30), "a free connection slot", || {
        get(&api, "/metrics").filter(|p| p.starts_with("HTTP/1.1 200"))
    });
    let refused: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("plexus_api_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused counter: {page}"));
    assert!(refused >= 1, "{page}");
}

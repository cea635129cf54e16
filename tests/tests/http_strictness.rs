//! Requests HTTP says to refuse: two `Range` headers, HTTP/1.1 without `Host` (or with two); and a 404 that does
//! not echo control characters from the path.

mod common;

use std::time::Duration;

use b2fs_tests::emulator::Emulator;
use common::start;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `head` as is and returns the status line and body.
async fn raw(addr: &str, head: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused() {
    let env = start(Emulator::builder().virtual_file("a.plot", 100_000), |_| {}).await;
    let addr = env.base.trim_start_matches("http://").to_string();
    let cases = [
        (
            "two Range headers",
            "GET /files/a.plot HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nRange: bytes=10-19\r\nConnection: close\r\n\r\n",
            " 400 ",
        ),
        (
            "HTTP/1.1 without Host",
            "GET /files/a.plot HTTP/1.1\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n",
            " 400 ",
        ),
        (
            "two Host headers",
            "GET /files/a.plot HTTP/1.1\r\nHost: x\r\nHost: y\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n",
            " 400 ",
        ),
        (
            "HTTP/1.0 without Host",
            "GET /files/a.plot HTTP/1.0\r\nRange: bytes=0-9\r\n\r\n",
            " 206 ",
        ),
        (
            "one Range, with Host",
            "GET /files/a.plot HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n",
            " 206 ",
        ),
    ];
    for (what, head, want) in cases {
        let (status, body) = raw(&addr, head).await;
        let shown = if status.contains(" 206 ") {
            "(10 bytes)"
        } else {
            body.trim()
        };
        println!("{what}: {status} {shown}");
        assert!(status.contains(want), "{what}: {status} {body}");
    }
    let (status, body) = raw(
        &addr,
        "GET /files/a.plot%00evil HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    println!("NUL in the name: {status} {}", body.trim());
    assert!(status.contains(" 404 "), "{status}");
    assert!(!body.contains('\0') && !body.contains("evil"), "{body:?}");
    let (status, body) = raw(
        &addr,
        "GET /files/missing.plot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        status.contains(" 404 ") && body.contains("missing.plot"),
        "{status} {body}"
    );
}

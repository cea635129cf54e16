//! systemd readiness (`Type=notify`) and SIGHUP of the real binaries, without systemd: the test binds the
//! notification socket itself (`NOTIFY_SOCKET`) and checks what "ready" promises at the moment it arrives.
//!
//! - b2-proxy: READY once the catalog is loaded (then `/healthz` is 200), or once its first load failed (then
//!   `/healthz` is 503 with the reason, and the load is retried); SIGHUP reloads the catalog and does not end the
//!   process; SIGTERM exits 0.
//! - b2fs-shim: READY once the mount answers with the plots listed; SIGHUP refreshes the file list at once.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;
use b2fs_tests::mount::{proxy_binary, shim_binary, wait_timeout};

/// The notification socket a Type=notify service gets from systemd.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next datagram, within `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(limit))
            .expect("read timeout");
        let mut buf = vec![0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill() on the pid of a child we have not reaped yet.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({}, {sig})", child.id());
}

async fn healthz(port: u16) -> (u16, String) {
    let r = common::http()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("healthz");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn spawn_proxy(emu: &Emulator, dir: &Path, port: u16, notify: &NotifySocket) -> Killed {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{}[server]\nlisten = \"127.0.0.1:{port}\"\n[cache]\ndisk = 0\ndisk_dir = {:?}\n\
             [fetch]\ntimeout = \"1s\"\nretry_deadline = \"2s\"\n",
            emu.proxy_b2_toml(),
            dir.join("cache")
        ),
    )
    .expect("write config");
    let child = Command::new(proxy_binary().expect("b2-proxy binary"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "warn")
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn b2-proxy");
    Killed(child)
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_is_ready_when_the_catalog_is_loaded() {
    let emu = Emulator::builder()
        .virtual_file("plots/a.plot", 1 << 20)
        .start()
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = NotifySocket::new();
    let port = free_port();
    let mut proxy = spawn_proxy(&emu, dir.path(), port, &notify);
    let msg = tokio::task::block_in_place(|| notify.next(Duration::from_secs(30)))
        .expect("no READY from b2-proxy within 30 s");
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains("catalog of 1 files loaded"), "{msg}");
    // What READY promises: the API answers and the catalog is there, now.
    let (status, body) = healthz(port).await;
    assert_eq!(status, 200, "{body}");

    // SIGHUP reloads the catalog now (the periodic refresh is 5 minutes away; early refreshes are at least 5 s
    // apart, so wait those out first) and the process keeps running.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    emu.add_virtual_file("plots/new.plot", 4096);
    signal(&proxy.0, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let files =
            common::get_text(common::http().get(format!("http://127.0.0.1:{port}/files"))).await;
        if files.contains("plots/new.plot") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the catalog within 3 s: {files}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proxy.0.try_wait().expect("try_wait").is_none(),
        "SIGHUP ended b2-proxy"
    );

    signal(&proxy.0, libc::SIGTERM);
    let status =
        tokio::task::block_in_place(|| wait_timeout(&mut proxy.0, Duration::from_secs(20)))
            .expect("wait")
            .expect("b2-proxy did not exit within 20 s of SIGTERM");
    assert!(status.success(), "{status}");
    let msg = notify.next(Duration::from_secs(1)).unwrap_or_default();
    assert!(msg.contains("STOPPING=1"), "{msg:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_is_ready_after_a_failed_first_load() {
    let emu = Emulator::builder()
        .virtual_file("plots/a.plot", 1 << 20)
        .offline(true)
        .start()
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = NotifySocket::new();
    let port = free_port();
    let mut proxy = spawn_proxy(&emu, dir.path(), port, &notify);
    let msg = tokio::task::block_in_place(|| notify.next(Duration::from_secs(60)))
        .expect("no READY from b2-proxy within 60 s of a failing upstream");
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains("catalog not loaded"), "{msg}");
    let (status, body) = healthz(port).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("reason"), "{body}");

    // Upstream back: the background retry loads the catalog, and /healthz turns 200.
    emu.set_offline(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if healthz(port).await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no catalog within 15 s of the upstream coming back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proxy.0.try_wait().expect("try_wait").is_none(),
        "b2-proxy exited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shim_is_ready_when_the_mount_answers_and_sighup_refreshes() {
    let env = common::start(
        Emulator::builder().virtual_file("plots/a.plot", 1 << 20),
        |_| {},
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let notify = NotifySocket::new();
    let shim = Command::new(shim_binary().expect("b2fs-shim binary"))
        .arg(&mnt)
        .args([
            "--proxy",
            &env.base,
            "--log-level",
            "warn",
            "--attr-ttl",
            "1h",
        ])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn b2fs-shim");
    let mut shim = Killed(shim);
    let msg = tokio::task::block_in_place(|| notify.next(Duration::from_secs(30)))
        .expect("no READY from b2fs-shim within 30 s");
    assert!(msg.contains("READY=1"), "{msg}");
    // What READY promises: the mount is there and lists the plots, now.
    let listed: Vec<String> = std::fs::read_dir(mnt.join("plots"))
        .expect("the mount lists plots/ at READY")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, ["a.plot"]);

    // A new upload, reloaded by the proxy; the shim's file list (1 h TTL) follows on SIGHUP, not later.
    env.emu.add_virtual_file("plots/b.plot", 4096);
    env.proxy
        .as_ref()
        .expect("proxy")
        .catalog
        .refresh()
        .await
        .expect("catalog refresh");
    signal(&shim.0, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mnt.join("plots/b.plot").exists() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not refresh the shim's file list within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shim.0.try_wait().expect("try_wait").is_none(),
        "SIGHUP ended b2fs-shim"
    );

    signal(&shim.0, libc::SIGTERM);
    let status = tokio::task::block_in_place(|| wait_timeout(&mut shim.0, Duration::from_secs(20)))
        .expect("wait")
        .expect("b2fs-shim did not exit within 20 s of SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!b2fs_tests::mount::is_mounted(&mnt), "still mounted");
}

//! Browser tests: a script under `tests/browser/` drives Debian's chromium through
//! playwright-core against a real agent. Shared by `web_page.rs` and `web_cluster.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The browser scripts' own limit is 150 s; this one catches a hung `node`.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why a browser test cannot run here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("`node` is not on PATH".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("tests/browser/node_modules is missing (cd tests/browser && npm ci)".into());
    }
    None
}

/// `true` when `test` can run; otherwise says loudly why not and returns `false` — or fails
/// when `TOLLGATE_BROWSER_TESTS=1` (CI).
pub fn ready(test: &str) -> bool {
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    assert!(
        std::env::var("TOLLGATE_BROWSER_TESTS").as_deref() != Ok("1"),
        "TOLLGATE_BROWSER_TESTS=1 but the browser test cannot run: {why}"
    );
    super::skipped(
        test,
        &why,
        "install chromium and run `npm ci` in tests/browser; TOLLGATE_BROWSER_TESTS=1 makes it fail instead of skipping",
    );
    false
}

/// Runs `node <script>` in `tests/browser` with `envs` (plus `TOLLGATE_SCREENSHOT_DIR` and
/// `TOLLGATE_CHROMIUM`), draining both pipes while it runs so a chatty script cannot block,
/// prints its output and panics unless it exits 0 within [`SCRIPT_TIMEOUT`].
pub fn run_script(script: &str, envs: &[(&str, String)], screenshots: &Path) {
    let mut command = Command::new("node");
    command
        .arg(script)
        .current_dir(browser_dir())
        .env("TOLLGATE_SCREENSHOT_DIR", screenshots)
        .env("TOLLGATE_CHROMIUM", CHROMIUM)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start node");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status: Option<ExitStatus> = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    println!("--- {script} stdout\n{out}\n--- {script} stderr\n{err}");
    let status = status.unwrap_or_else(|| panic!("{script} ran over {SCRIPT_TIMEOUT:?}"));
    assert!(
        status.success(),
        "{script} failed ({status}):\n{err}\n(screenshots in {})",
        screenshots.display()
    );
}

//! The real clocks: the system's, and the local platform's (system time plus an offset
//! that `infra/kami clock advance 31d` writes to a file, so expiries and settlement
//! periods can be tried end to end without waiting).
//!
//! The platform also gives each function a skew file of its own
//! (`KAMI_LOCAL_SKEW_FILE`, `infra/kami clock skew DeliveryWorkerFunction -10m`), whose
//! offset is added to the shared one: clocks that disagree between functions, for the
//! fault suite (docs/reliability.md, section 4).
//!
//! Only the local platform can move the clock: it alone sets `KAMI_LOCAL_CLOCK_FILE`
//! (infra/kami_local/runtime.py). `template.yaml` never names the variable (a test
//! below reads it), and should someone set it on a deployed function anyway, the
//! function refuses it at cold start and keeps the system clock: AWS Lambda sets
//! `LAMBDA_TASK_ROOT` and `AWS_LAMBDA_INITIALIZATION_TYPE` (the emulator the platform
//! runs sets neither), and a deployed function's AWS endpoint is AWS's own, never the
//! loopback emulator the local platform points every SDK call at.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::domain::time::Timestamp;
use crate::ports::Clock;

pub const LOCAL_CLOCK_FILE_ENV: &str = "KAMI_LOCAL_CLOCK_FILE";
pub const LOCAL_SKEW_FILE_ENV: &str = "KAMI_LOCAL_SKEW_FILE";

/// The system's clock: every deployed function's.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// System time plus the offsets in seconds held by its files: the platform's shared
/// clock file, and this function's skew file if it has one.
pub struct LocalClock {
    files: Vec<OffsetFile>,
}

/// A file holding an offset in seconds (a decimal integer, negative for a skew behind;
/// no file means no offset). Every call looks at the file's metadata; its text is read
/// again when that changed, or at the latest a second after the last read (two
/// rewrites within the file system's timestamp granularity can look alike).
struct OffsetFile {
    path: PathBuf,
    cached: Mutex<Option<Cached>>,
}

const REREAD_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Cached {
    stamp: FileStamp,
    read_at: Instant,
    offset: i64,
}

/// What tells a rewritten file from the one already read (the platform replaces the
/// file atomically, so a new inode each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode,
        }
    }
}

impl LocalClock {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LocalClock {
            files: vec![OffsetFile::new(path.into())],
        }
    }

    /// This function's own skew, added to the shared offset.
    pub fn with_skew(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(OffsetFile::new(path.into()));
        self
    }

    /// The offset its files hold now, in seconds.
    pub fn offset_seconds(&self) -> i64 {
        self.files.iter().map(OffsetFile::offset_seconds).sum()
    }
}

impl OffsetFile {
    fn new(path: PathBuf) -> Self {
        OffsetFile {
            path,
            cached: Mutex::new(None),
        }
    }

    fn offset_seconds(&self) -> i64 {
        let Ok(metadata) = std::fs::metadata(&self.path) else {
            return 0;
        };
        let stamp = FileStamp::of(&metadata);
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(seen) = *cached
            && seen.stamp == stamp
            && seen.read_at.elapsed() < REREAD_AFTER
        {
            return seen.offset;
        }
        let offset = match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse::<i64>().unwrap_or_else(|_| {
                tracing::warn!(file = %self.path.display(), "local clock file is not a number of seconds; no offset");
                0
            }),
            Err(_) => 0,
        };
        *cached = Some(Cached {
            stamp,
            read_at: Instant::now(),
            offset,
        });
        offset
    }
}

impl Clock for LocalClock {
    fn now(&self) -> Timestamp {
        Timestamp::now().plus_seconds(self.offset_seconds())
    }
}

/// The clock of a function, from its environment.
pub fn clock_from_env() -> Arc<dyn Clock> {
    clock_from_lookup(|name| std::env::var(name).ok())
}

/// The system clock, unless the local platform gave this process a clock file.
pub fn clock_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Arc<dyn Clock> {
    let Some(path) = lookup(LOCAL_CLOCK_FILE_ENV).filter(|p| !p.is_empty()) else {
        return Arc::new(SystemClock);
    };
    match not_local(&lookup) {
        None => {
            let mut clock = LocalClock::new(&path);
            if let Some(skew) = lookup(LOCAL_SKEW_FILE_ENV).filter(|p| !p.is_empty()) {
                clock = clock.with_skew(skew);
            }
            tracing::warn!(
                file = %path,
                offset_seconds = clock.offset_seconds(),
                "local clock: time follows `infra/kami clock`"
            );
            Arc::new(clock)
        }
        Some(reason) => {
            tracing::error!(
                reason,
                "{LOCAL_CLOCK_FILE_ENV} ignored: only the local platform may move the clock"
            );
            Arc::new(SystemClock)
        }
    }
}

/// Why this process is not running under the local platform, if it is not.
fn not_local(lookup: &impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    if lookup("LAMBDA_TASK_ROOT").is_some() || lookup("AWS_LAMBDA_INITIALIZATION_TYPE").is_some() {
        return Some("running in AWS Lambda");
    }
    match lookup("AWS_ENDPOINT_URL") {
        Some(endpoint) if is_loopback_url(&endpoint) => None,
        _ => Some("AWS calls do not go to a local emulator"),
    }
}

fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| env.get(name).cloned()
    }

    fn temp_file(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "kami-clock-{name}-{}",
            crate::domain::time::new_id()
        ))
    }

    /// As the platform writes it: a new file renamed over the old one.
    fn write(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn offset_of(clock: &dyn Clock) -> i64 {
        clock.now().unix_seconds() - Timestamp::now().unix_seconds()
    }

    #[test]
    fn local_clock_follows_its_file() {
        let path = temp_file("follows");
        let clock = LocalClock::new(&path);
        assert_eq!(clock.offset_seconds(), 0, "no file, no offset");
        write(&path, "2678400\n");
        assert_eq!(clock.offset_seconds(), 31 * 86_400);
        assert!((offset_of(&clock) - 31 * 86_400).abs() <= 1);
        write(&path, "3600\n");
        assert_eq!(clock.offset_seconds(), 3600);
        write(&path, "not a number");
        assert_eq!(clock.offset_seconds(), 0);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(clock.offset_seconds(), 0, "reset removes the file");
    }

    #[test]
    fn a_skew_file_adds_its_offset_to_the_shared_one() {
        let (shared, skew) = (temp_file("shared"), temp_file("skew"));
        let clock = LocalClock::new(&shared).with_skew(&skew);
        write(&shared, "3600");
        assert_eq!(clock.offset_seconds(), 3600, "no skew file, no skew");
        write(&skew, "-600");
        assert_eq!(clock.offset_seconds(), 3000, "a function 10 minutes behind");
        std::fs::remove_file(&shared).unwrap();
        assert_eq!(clock.offset_seconds(), -600, "the skew alone");
        std::fs::remove_file(&skew).unwrap();
        assert_eq!(clock.offset_seconds(), 0);
    }

    const LOCAL: &[(&str, &str)] = &[
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ("AWS_LAMBDA_FUNCTION_NAME", "CheckoutFunction"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
    ];

    #[test]
    fn only_the_local_platform_moves_the_clock() {
        let path = temp_file("guard");
        write(&path, "86400");
        let file = path.to_str().unwrap();
        let with = |extra: &[(&'static str, &str)]| {
            let mut pairs: Vec<(&str, &str)> = LOCAL.to_vec();
            pairs.push((LOCAL_CLOCK_FILE_ENV, file));
            pairs.extend_from_slice(extra);
            offset_of(clock_from_lookup(lookup(&pairs)).as_ref())
        };
        assert!((with(&[]) - 86_400).abs() <= 1, "under the local platform");
        // In AWS Lambda, or with AWS's own endpoints, the variable is ignored.
        for refused in [
            &[("LAMBDA_TASK_ROOT", "/var/task")][..],
            &[("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")][..],
            &[(
                "AWS_ENDPOINT_URL",
                "https://dynamodb.us-east-1.amazonaws.com",
            )][..],
            &[("AWS_ENDPOINT_URL", "http://127.0.0.1.example.com")][..],
        ] {
            assert!(with(refused).abs() <= 1, "{refused:?}");
        }
        let mut no_endpoint: Vec<(&str, &str)> = vec![(LOCAL_CLOCK_FILE_ENV, file)];
        no_endpoint.push(("AWS_LAMBDA_FUNCTION_NAME", "CheckoutFunction"));
        assert!(offset_of(clock_from_lookup(lookup(&no_endpoint)).as_ref()).abs() <= 1);
        assert!(offset_of(clock_from_lookup(lookup(LOCAL)).as_ref()).abs() <= 1);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn loopback_urls() {
        for url in [
            "http://127.0.0.1:5000",
            "http://localhost:4566/",
            "http://[::1]:5000",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "https://kms.us-east-1.amazonaws.com",
            "http://10.0.0.1:5000",
            "127.0.0.1:5000",
            "",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn no_deployment_sets_the_local_clock() {
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
        )
        .unwrap();
        assert!(template.contains("Environment:"), "read the real template");
        assert!(!template.contains(LOCAL_CLOCK_FILE_ENV));
    }

    /// What reads the machine's time. Only the clocks above may (and `Timestamp::now`
    /// itself, in `domain::time`).
    const MACHINE_TIME: [&str; 3] = ["Timestamp::now", "SystemTime::now", "OffsetDateTime::now"];

    fn rust_files(dir: &std::path::Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    /// The store, the use cases (tests included) and the functions take the time from
    /// `ctx.clock`, never from the machine: a local or fake clock moves every time Kami
    /// writes, and nothing lags behind it.
    #[test]
    fn only_the_clocks_read_the_machines_time() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        rust_files(&root.join("shared/src"), &mut files);
        for function in std::fs::read_dir(root.join("functions")).unwrap() {
            rust_files(&function.unwrap().path().join("src"), &mut files);
        }
        let under = |dir: &str| {
            files
                .iter()
                .filter(|file| file.starts_with(root.join(dir)))
                .count()
        };
        assert!(
            under("shared/src/store") >= 5 && under("shared/src/app/fulfil") >= 2,
            "read the real sources"
        );
        assert!(under("functions") >= 5, "read every function");
        let allowed = [
            root.join("shared/src/adapters/clock.rs"),
            root.join("shared/src/domain/time.rs"),
        ];
        let mut offenders = Vec::new();
        for file in files.iter().filter(|file| !allowed.contains(file)) {
            let text = std::fs::read_to_string(file).unwrap();
            for (number, line) in text.lines().enumerate() {
                if MACHINE_TIME.iter().any(|needle| line.contains(needle)) {
                    offenders.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "read the time from ctx.clock (or take `now` from the caller): {offenders:#?}"
        );
    }
}

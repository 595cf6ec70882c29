//! The JSON access log: one line per request (and per TCP connection), with
//! Envoy's field names and response flags, written by a dedicated thread so
//! the data path never blocks on the sink. When the sink falls behind by
//! more than [`QUEUE`] lines, lines are dropped and counted, not queued.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Off,
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = std::convert::Infallible;
    /// `off`, `stdout` (or `-`), or a file path (appended to).
    fn from_str(s: &str) -> Result<Sink, Self::Err> {
        Ok(match s {
            "" | "off" | "none" => Sink::Off,
            "stdout" | "-" | "/dev/stdout" => Sink::Stdout,
            path => Sink::File(PathBuf::from(path)),
        })
    }
}

/// Lines that may wait for the writer thread.
pub const QUEUE: usize = 16 * 1024;

/// A handle to the access log (cheap to share).
#[derive(Clone, Default)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the sink and starts the writer thread.
    pub fn open(sink: &Sink) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match sink {
            Sink::Off => return Ok(AccessLog::default()),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    // Batch whatever else is queued, then write once.
                    while let Ok(line) = rx.try_recv() {
                        buf.extend_from_slice(line.as_bytes());
                        buf.push(b'\n');
                        if buf.len() > 60 * 1024 {
                            break;
                        }
                    }
                    if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                        // A broken sink must not take the proxy down.
                    }
                    buf.clear();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line (a JSON object); drops it when the queue is full.
    pub fn write(&self, line: String) {
        if let Some(tx) = &self.tx {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Lines dropped because the sink fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

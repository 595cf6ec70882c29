//! The config the proxy serves: one immutable snapshot — the [`NodeConfig`]
//! and its [`CompiledConfig`] together — swapped whole.
//!
//! The data path reads the current snapshot through [`ConfigSource`] (an
//! atomic pointer load, no lock); the control path offers new versions with
//! [`ConfigStore::offer_json`], which validates **and compiles** and either
//! swaps the snapshot in or refuses it and keeps the previous one. So the
//! version the control API reports as served is always the one the data path
//! runs: there is no second, later compile step that could fail. Whoever must
//! react to a swap holds a [`ConfigStore::subscribe`] receiver.
//!
//! Version rules (a push carries `NodeConfig.version`):
//! * greater than the served version: swapped in (ACK, changed);
//! * equal, and the same content: nothing to do (ACK, unchanged) — a
//!   retried push after a lost answer;
//! * equal with different content, or lower: refused (NACK) — a config that
//!   changed must carry a new version, and an older one must never replace a
//!   newer one;
//! * version 0 is refused: 0 means "nothing served".

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwapOption, Guard};
use dpumesh_api::NodeConfig;
use tokio::sync::watch;

use crate::compiled::CompiledConfig;
use crate::proxy::ConfigSource;

/// One served config: as pushed, and compiled for the data path.
#[derive(Debug)]
pub struct Served {
    pub config: NodeConfig,
    pub compiled: Arc<CompiledConfig>,
}

impl Deref for Served {
    type Target = NodeConfig;
    fn deref(&self) -> &NodeConfig {
        &self.config
    }
}

/// The served snapshot: `None` until a first config was accepted.
pub type Snapshot = Option<Arc<Served>>;

/// The answer to an offered config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// `version` is served now; `changed` is false when it already was.
    Accepted { version: u64, changed: bool },
    /// Refused; `serving` (0 = none) keeps being served. Every reason, each
    /// "<path>: <what is wrong>".
    Rejected { serving: u64, errors: Vec<String> },
}

/// See the module docs.
pub struct ConfigStore {
    current: ArcSwapOption<Served>,
    /// Serialises offers so that "compare versions, then swap" is one step.
    /// Only the control path takes it; readers never do.
    offers: Mutex<()>,
    changes: watch::Sender<Snapshot>,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

impl Default for ConfigStore {
    fn default() -> Self {
        ConfigStore {
            current: ArcSwapOption::empty(),
            offers: Mutex::new(()),
            changes: watch::Sender::new(None),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }
}

impl ConfigStore {
    pub fn new() -> Arc<ConfigStore> {
        Arc::new(ConfigStore::default())
    }

    /// The served snapshot, for the data path: lock-free, cheap enough per
    /// request. Hold the guard only briefly; use [`ConfigStore::current`] to
    /// keep a snapshot across awaits.
    pub fn load(&self) -> Guard<Snapshot> {
        self.current.load()
    }

    /// The served snapshot as an owned `Arc`.
    pub fn current(&self) -> Snapshot {
        self.current.load_full()
    }

    /// Version being served, 0 when none.
    pub fn serving_version(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |c| c.version)
    }

    /// A receiver that sees every swapped-in snapshot (the latest one when
    /// several swaps happen between two looks).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.changes.subscribe()
    }

    /// Number of accepted and of refused offers since start.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }

    /// Offers a NodeConfig in its JSON form: parsed, validated, version-checked,
    /// and swapped in only when all of that passed.
    pub fn offer_json(&self, json: &[u8]) -> Offer {
        match NodeConfig::from_json(json) {
            Ok(config) => self.offer(config),
            Err(e) => self.reject(self.serving_version(), vec![e.to_string()]),
        }
    }

    /// Offers an already parsed NodeConfig: validated, compiled (with the
    /// served config's runtime state carried over: outlier ejections,
    /// rate-limit buckets, pool counters), version-checked.
    pub fn offer(&self, config: NodeConfig) -> Offer {
        // The served config is kept (config dump, identities, the
        // same-version comparison), so keep it compact: a parser grows
        // every list by doubling from room for four (1000 services with one
        // port and three endpoints each: ≈ 0.8 MB of unused room), while a
        // clone allocates each list and string at its length. Cloned before
        // compiling: the compiled form then reuses the parsed copy's memory.
        let config = compact(config);
        let mut errors = match config.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.messages(),
        };
        // A poisoned lock only means another offer panicked mid-way; the swap
        // itself is a single atomic store, so the state is still consistent.
        let _offering = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        let serving = self.current.load_full();
        let serving_version = serving.as_ref().map_or(0, |c| c.version);
        // Compile only what validated: the compiler's messages would repeat
        // the validator's for the same fields.
        let compiled = if errors.is_empty() {
            match CompiledConfig::compile_after(&config, serving.as_ref().map(|s| &*s.compiled)) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.extend(e.messages());
                    None
                }
            }
        } else {
            None
        };

        let version_error = if config.version == 0 {
            Some("version: 0 is not a config version (versions start at 1)".to_string())
        } else if config.version < serving_version {
            Some(format!(
                "version: {} is older than the served version {serving_version}",
                config.version
            ))
        } else if config.version == serving_version
            && serving.as_deref().is_some_and(|s| s.config != config)
        {
            Some(format!(
                "version: {} is already served with different content; a changed config needs a higher version",
                config.version
            ))
        } else {
            None
        };
        if let Some(e) = version_error {
            if !errors.iter().any(|x| x.starts_with("version:")) {
                errors.push(e);
            }
        }
        let Some(compiled) = compiled.filter(|_| errors.is_empty()) else {
            return self.reject(serving_version, errors);
        };

        self.accepted.fetch_add(1, Ordering::Relaxed);
        if config.version == serving_version {
            tracing::debug!(version = serving_version, "config re-pushed, unchanged");
            return Offer::Accepted {
                version: serving_version,
                changed: false,
            };
        }
        let version = config.version;
        let served = Arc::new(Served { config, compiled });
        self.current.store(Some(Arc::clone(&served)));
        self.changes.send_replace(Some(served));
        tracing::info!(version, previous = serving_version, "config swapped in");
        Offer::Accepted {
            version,
            changed: true,
        }
    }

    fn reject(&self, serving: u64, errors: Vec<String>) -> Offer {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(serving, ?errors, "config refused, keeping the served one");
        Offer::Rejected { serving, errors }
    }
}

/// The data path reads the compiled half of the served snapshot.
impl ConfigSource for ConfigStore {
    fn snapshot(&self) -> Option<Arc<CompiledConfig>> {
        self.current
            .load()
            .as_ref()
            .map(|s| Arc::clone(&s.compiled))
    }
}

/// The same config, every list and string allocated at its length.
fn compact(config: NodeConfig) -> NodeConfig {
    config.clone()
}

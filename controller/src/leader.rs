//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it.
//!
//! Every `retry_period` a candidate reads the Lease. It is free when it does not
//! exist (create it), names no holder, or its record (holder, renewTime,
//! transitions) has not changed for `lease_duration` as seen on the candidate's
//! own clock (so clocks need not agree); then the candidate writes itself in as
//! holder. The holder renews `renewTime`. Every write is a create or a replace
//! carrying the resourceVersion that was read, so of two racing writers the API
//! server accepts one and answers `409 Conflict` to the other, which stays (or
//! becomes) a follower. A holder that could not renew for `renew_deadline` steps
//! down before its lease can expire for the others.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (written as `holderIdentity`).
    pub identity: String,
    /// `leaseDurationSeconds`: how long others wait for a silent holder.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between attempts (acquire or renew).
    pub retry_period: Duration,
}

/// The last Lease record seen and when (on this process's clock) it changed.
struct Observed {
    record: Option<(String, Option<MicroTime>, Option<i32>)>,
    at: Instant,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Leading,
    /// Someone else holds a live lease, or won a race for a free one (409).
    Following { holder: String },
    /// Our renewal was refused (409: the Lease changed since we read it). We
    /// still hold it as far as we know; the next attempt reads it again.
    RenewConflict,
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Observed,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: Observed {
                record: None,
                at: Instant::now(),
            },
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn remember(&mut self, spec: &LeaseSpec) {
        let record = Some((
            spec.holder_identity.clone().unwrap_or_default(),
            spec.renew_time.clone(),
            spec.lease_transitions,
        ));
        if record != self.observed.record {
            self.observed = Observed {
                record,
                at: Instant::now(),
            };
        }
    }

    /// One acquire-or-renew attempt.
    pub async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let name = self.settings.name.clone();
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.remember(&created.spec.unwrap_or_default());
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following {
                    holder: String::new(),
                }),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        self.remember(&current);
        let holder = current.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.settings.identity;
        let duration = current
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.settings.lease_duration);
        if !mine && !holder.is_empty() && self.observed.at.elapsed() < duration {
            return Ok(Attempt::Following { holder });
        }
        let transitions = current.lease_transitions.unwrap_or(0);
        lease.spec = Some(if mine {
            self.spec(current.acquire_time.clone(), transitions)
        } else {
            self.spec(None, transitions.saturating_add(1))
        });
        // metadata.resourceVersion is the one just read: a concurrent write → 409.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.remember(&updated.spec.unwrap_or_default());
                if !mine {
                    tracing::info!(
                        identity = %self.settings.identity,
                        previous = %holder,
                        "took over the lease"
                    );
                }
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 && mine => Ok(Attempt::RenewConflict),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following { holder }),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this replica holds it: holder cleared,
    /// `leaseDurationSeconds` 1, so another replica takes over at its next
    /// attempt instead of waiting for the lease to expire. Returns whether it did.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it meanwhile: it is not ours to release any more.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs forever, publishing whether this replica leads (and who does).
    pub async fn run(mut self, leadership: watch::Sender<Leadership>) {
        let me = self.settings.identity.clone();
        let mut last_renew: Option<Instant> = None;
        loop {
            match self.attempt().await {
                Ok(Attempt::Leading) => {
                    if last_renew.is_none() {
                        tracing::info!(identity = %me, lease = %self.settings.name, "leading");
                    }
                    last_renew = Some(Instant::now());
                    leadership.send_if_modified(|l| l.set(true, Some(me.clone())));
                }
                Ok(Attempt::Following { holder }) => {
                    if last_renew.take().is_some() {
                        tracing::warn!(%holder, "lost the lease");
                    }
                    let holder = Some(holder).filter(|h| !h.is_empty());
                    leadership.send_if_modified(|l| l.set(false, holder));
                }
                result @ (Ok(Attempt::RenewConflict) | Err(_)) => {
                    match result {
                        Err(e) => tracing::warn!(lease = %self.settings.name, "lease: {e}"),
                        _ => {
                            tracing::info!(lease = %self.settings.name, "renewal conflicted (409); reading the lease again")
                        }
                    }
                    if last_renew.is_some_and(|t| t.elapsed() >= self.settings.renew_deadline) {
                        tracing::warn!("could not renew the lease in time; stepping down");
                        last_renew = None;
                        leadership.send_if_modified(|l| l.set(false, None));
                    }
                }
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }
}

/// Whether this replica leads, and the holder when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leading: bool,
    pub holder: Option<String>,
}

impl Leadership {
    /// Sets both; true when something changed.
    fn set(&mut self, leading: bool, holder: Option<String>) -> bool {
        let new = Leadership { leading, holder };
        if *self == new {
            false
        } else {
            *self = new;
            true
        }
    }
}

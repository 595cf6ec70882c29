//! Envoy's response flags, as a small bit set.

/// One response flag (Envoy's short names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Flag {
    /// No route configured for the request.
    NoRoute = 0,
    /// Upstream connection failure.
    UpstreamConnectionFailure,
    /// No healthy upstream endpoint.
    NoHealthyUpstream,
    /// Upstream request timeout.
    UpstreamRequestTimeout,
    /// Upstream retry limit exceeded.
    UpstreamRetryLimitExceeded,
    /// Upstream reset / connection termination before the response.
    UpstreamRemoteReset,
    /// Request delayed by fault injection.
    DelayInjected,
    /// Request aborted by fault injection.
    FaultInjected,
    /// Downstream connection termination.
    DownstreamConnectionTermination,
    /// Upstream overflow: a connection-pool limit (circuit breaker) was hit.
    UpstreamOverflow,
    /// Rejected by the local rate limit.
    RateLimited,
}

pub(super) const COUNT: usize = 11;

pub(super) const ALL: [Flag; COUNT] = [
    Flag::NoRoute,
    Flag::UpstreamConnectionFailure,
    Flag::NoHealthyUpstream,
    Flag::UpstreamRequestTimeout,
    Flag::UpstreamRetryLimitExceeded,
    Flag::UpstreamRemoteReset,
    Flag::DelayInjected,
    Flag::FaultInjected,
    Flag::DownstreamConnectionTermination,
    Flag::UpstreamOverflow,
    Flag::RateLimited,
];

impl Flag {
    pub fn short(self) -> &'static str {
        match self {
            Flag::NoRoute => "NR",
            Flag::UpstreamConnectionFailure => "UF",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamRequestTimeout => "UT",
            Flag::UpstreamRetryLimitExceeded => "URX",
            Flag::UpstreamRemoteReset => "UR",
            Flag::DelayInjected => "DI",
            Flag::FaultInjected => "FI",
            Flag::DownstreamConnectionTermination => "DC",
            Flag::UpstreamOverflow => "UO",
            Flag::RateLimited => "RL",
        }
    }
}

/// The flags of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

impl Flags {
    pub fn set(&mut self, f: Flag) {
        self.0 |= 1 << f as u8;
    }

    pub fn has(self, f: Flag) -> bool {
        self.0 & (1 << f as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Flag> {
        ALL.into_iter().filter(move |f| self.has(*f))
    }
}

/// Envoy's format: comma-separated short names, "-" when none.
impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.short())?;
        }
        Ok(())
    }
}

//! `dpumesh demo-app` (hidden): the demo's bookinfo-like application, one
//! process per pod, started by `dpumesh demo` inside the pod's netns.
//!
//! * `productpage` calls `details` and `reviews` and returns what they said;
//! * `reviews` v1 answers alone, v2 and v3 call `ratings`;
//! * `ratings` and `details` answer; `--fail-rate` makes a share of the
//!   answers `503` (exactly that share: every request adds the rate to a
//!   running total and fails when the total crosses an integer).
//!
//! Calls go to the services' VIPs with the service name as `Host`, so they are
//! steered into dpu-proxy by the dataplane and routed there like any meshed
//! traffic. Every answer is JSON naming the pod and version that produced it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use super::http as client;

/// Time allowed for each call to another service.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Productpage,
    Details,
    Reviews,
    Ratings,
}

#[derive(Debug, Args)]
pub struct AppArgs {
    /// What this process serves.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Version label of this workload (v1, v2, ...), returned in every answer.
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Pod name, returned in every answer.
    #[arg(long)]
    pub pod: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9080")]
    pub listen: SocketAddr,
    /// Share of requests answered with 503 (0.0 ..= 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// `details` service address (VIP:port), for productpage.
    #[arg(long)]
    pub details: Option<SocketAddr>,
    /// `reviews` service address (VIP:port), for productpage.
    #[arg(long)]
    pub reviews: Option<SocketAddr>,
    /// `ratings` service address (VIP:port), for reviews v2/v3.
    #[arg(long)]
    pub ratings: Option<SocketAddr>,
}

struct App {
    role: Role,
    version: String,
    pod: String,
    fail_rate: f64,
    details: Option<SocketAddr>,
    reviews: Option<SocketAddr>,
    ratings: Option<SocketAddr>,
    served: AtomicU64,
}

pub fn run(args: AppArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!(
            "--fail-rate {}: must be between 0.0 and 1.0",
            args.fail_rate
        );
    }
    if args.role == Role::Productpage && (args.details.is_none() || args.reviews.is_none()) {
        bail!("--role productpage needs --details and --reviews (service VIP:port)");
    }
    if args.role == Role::Reviews && args.version != "v1" && args.ratings.is_none() {
        bail!(
            "--role reviews --version {} calls ratings: it needs --ratings (service VIP:port)",
            args.version
        );
    }
    let app = Arc::new(App {
        role: args.role,
        version: args.version,
        pod: args.pod,
        fail_rate: args.fail_rate,
        details: args.details,
        reviews: args.reviews,
        ratings: args.ratings,
        served: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("creating the runtime")?;
    runtime.block_on(serve(app, args.listen))
}

async fn serve(app: Arc<App>, listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "demo-app {:?} {} ({}) listening on {listen}",
        app.role, app.version, app.pod
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl App {
    /// True when this request is one of the `fail_rate` share to fail.
    fn fails(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        ((n + 1) as f64 * self.fail_rate).floor() > (n as f64 * self.fail_rate).floor()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if self.fails() {
            return self.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "failing on purpose (--fail-rate)"}),
            );
        }
        let body = match self.role {
            Role::Details => json!({"id": 0, "author": "William Shakespeare", "year": 1595}),
            Role::Ratings => json!({"id": 0, "stars": 4}),
            Role::Reviews => {
                let ratings = match (self.version.as_str(), self.ratings) {
                    ("v1", _) | (_, None) => Value::Null,
                    (_, Some(addr)) => call(addr, "ratings:9080", "/ratings/0", &request_id).await,
                };
                json!({"id": 0, "ratings": ratings})
            }
            Role::Productpage => {
                let (details, reviews) = match (self.details, self.reviews) {
                    (Some(d), Some(r)) => tokio::join!(
                        call(d, "details:9080", "/details/0", &request_id),
                        call(r, "reviews:9080", "/reviews/0", &request_id)
                    ),
                    _ => (Value::Null, Value::Null),
                };
                json!({"details": details, "reviews": reviews})
            }
        };
        self.reply(StatusCode::OK, body)
    }

    fn reply(&self, status: StatusCode, mut body: Value) -> Response<Full<Bytes>> {
        body["pod"] = self.pod.clone().into();
        body["version"] = self.version.clone().into();
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// Calls another service through the mesh; the answer as JSON with its
/// `status` added (or `{"status": 0, "error": ...}` when nothing came back).
async fn call(addr: SocketAddr, host: &str, path: &str, request_id: &str) -> Value {
    let result = async {
        let mut c = client::Conn::open(addr, UPSTREAM_TIMEOUT).await?;
        let headers: Vec<(&str, &str)> = if request_id.is_empty() {
            vec![]
        } else {
            vec![("x-request-id", request_id)]
        };
        c.get(host, path, &headers, UPSTREAM_TIMEOUT).await
    }
    .await;
    match result {
        Ok(reply) => {
            let mut v = serde_json::from_str::<Value>(&reply.body)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({"text": reply.body}));
            v["status"] = reply.status.as_u16().into();
            v
        }
        Err(e) => json!({"status": 0, "error": format!("{e:#}")}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(rate: f64) -> App {
        App {
            role: Role::Ratings,
            version: "v1".into(),
            pod: "p".into(),
            fail_rate: rate,
            details: None,
            reviews: None,
            ratings: None,
            served: AtomicU64::new(0),
        }
    }

    #[test]
    fn fail_rate_is_exact() {
        for (rate, want) in [(0.0, 0), (1.0, 100), (0.25, 25), (0.5, 50)] {
            let a = app(rate);
            let failed = (0..100).filter(|_| a.fails()).count();
            assert_eq!(failed, want, "rate {rate}");
        }
    }
}

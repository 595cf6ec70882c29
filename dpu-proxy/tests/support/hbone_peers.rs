//! Peers for the HBONE tests (`mtls.rs`, `istiod_ca.rs`): a TCP echo
//! server behind the tunnel and an inbound gate that admits and records.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Mutex;

use dpu_proxy::hbone::{InboundGate, InboundTunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A real TCP echo server answering "echo:<bytes>" per read.
pub async fn echo_server(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Records every tunnel it admits.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<InboundTunnel>>);

impl InboundGate for Recorder {
    fn check(&self, t: &InboundTunnel) -> Result<(), String> {
        self.0.lock().expect("lock").push(t.clone());
        Ok(())
    }
}

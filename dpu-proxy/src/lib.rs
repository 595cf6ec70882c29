//! dpu-proxy

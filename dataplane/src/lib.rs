//! dpumesh-dataplane

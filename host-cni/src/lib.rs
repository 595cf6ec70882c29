//! dpumesh-cni

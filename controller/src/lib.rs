//! dpumesh-controller

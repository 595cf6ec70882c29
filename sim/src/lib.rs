//! The dpumesh simulator (see docs/simulator.md).

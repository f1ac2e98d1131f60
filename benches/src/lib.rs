//! Shared helpers for silica's criterion benches.

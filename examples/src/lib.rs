//! Examples for redlock-rs: see the files beside this crate's Cargo.toml.

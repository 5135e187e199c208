//! `ppn-boundary`: checks that the folder tree of the PPN Fabric workspace is the trust boundary
//! it is meant to be.
//!
//! The rules (see [`rules`] for their exact wording):
//! - **R1** untrusted `linux-proxy/` crates reach no trusted `components/` crate but `ppn-wire`
//!   (normal and build dependencies, transitively; **R1-dev** for dev-dependencies);
//! - **R2** trusted `components/` crates depend on no local crate outside `components/`;
//! - **R3** `components/`, `linux-proxy/` and `tools/` crates use the workspace lints
//!   (`unsafe_code = "forbid"`), and each `components/` library root has `#![no_std]` and
//!   `#![forbid(unsafe_code)]`;
//! - **R4** no `unsafe` keyword in any `.rs` file outside `system/`.
//!
//! [`rules::check`] is a pure function over a [`model::Model`]; [`metadata::load`] builds the
//! model from `cargo metadata` and the files on disk.
#![forbid(unsafe_code)]

pub mod metadata;
pub mod model;
pub mod rules;
pub mod scan;

use std::path::Path;

pub use metadata::Error;
pub use rules::{Counts, Rule, Violation, check};

/// The outcome of checking a workspace.
#[derive(Debug)]
pub struct Outcome {
    pub violations: Vec<Violation>,
    pub counts: Counts,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The one-line summary printed after the violations (if any).
    pub fn summary(&self) -> String {
        if self.passed() {
            format!("ppn-boundary: ok: R1-R4 hold for {}", self.counts)
        } else {
            format!("ppn-boundary: {} violation(s) in {}", self.violations.len(), self.counts)
        }
    }
}

/// Loads the workspace of `manifest_path` (default: the current directory's) and checks it.
pub fn run(manifest_path: Option<&Path>) -> Result<Outcome, Error> {
    let ws = metadata::load(manifest_path)?;
    Ok(Outcome { violations: check(&ws.model), counts: Counts::of(&ws.model) })
}

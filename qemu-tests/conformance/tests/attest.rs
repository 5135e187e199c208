//! The Attest service of the hosted TCB over the wire (`support/attest.rs`).

mod support {
    pub mod attest;
}

use ppn_conformance::HostedTcb;

#[test]
fn the_hosted_tcb_signs_statements_and_reports_that_check_offline() {
    let tcb = HostedTcb::start();
    let said = support::attest::check_attest(&tcb.socket).unwrap();
    assert!(said.contains("check offline"), "{said}");
}

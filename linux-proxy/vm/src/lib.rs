//! PPN VM plane (untrusted proxy side) — under construction.

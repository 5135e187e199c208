//! PPN guest agent: report protocol (shared by the agent and the host) — under construction.

//! PPN VM plane (untrusted proxy side): QEMU guests driven over QMP.
//!
//! * [`spec`]: the VM spec and the QEMU command line built from it (pure, unit-tested).
//! * [`qmp`]: a small async QMP client over a unix socket using `qapi`'s typed commands.
//! * [`manager`]: [`manager::VmManager`], one directory per VM; create/start/stop/destroy/list,
//!   re-attach to running VMs after the managing process restarts, virtio-mem and balloon.
//! * [`cgroup`]: per-VM cgroups (v2, else v1, else reported unavailable) with CPU and memory
//!   weights.
//! * [`agent`]: the guest agent's report stream over the VM's virtio-serial socket.
//! * [`balloon`]: the balloon policy (pure): targets from guest memory pressure, weights, a budget.
//! * [`migrate`]: live migration primitives (destination `-incoming defer`, progress, cancel).
//!
//! See `docs/vm.md`.

pub mod agent;
pub mod balloon;
pub mod cgroup;
pub mod manager;
pub mod migrate;
pub mod qmp;
pub mod spec;

pub use manager::{VmInfo, VmManager, VmState};
pub use qmp::{QmpClient, QmpError, QmpEvent};
pub use spec::{Accel, VmSpec, Weights};

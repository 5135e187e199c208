//! The agent's logic, kept in the library so it is tested on the host: finding the port by
//! name, parsing /proc/meminfo.

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} has no {field} line")]
    MissingField { path: PathBuf, field: &'static str },
    #[error("{path}: {field} is not a number of kB: {line:?}")]
    BadField { path: PathBuf, field: &'static str, line: String },
    #[error("no virtio-serial port named {name} under {dir}")]
    NoPort { name: String, dir: PathBuf },
}

/// MemTotal and MemAvailable, KiB, from the text of /proc/meminfo (`path` names it in errors).
pub fn parse_meminfo(path: &Path, text: &str) -> Result<(u64, u64), AgentError> {
    let field = |name: &'static str| -> Result<u64, AgentError> {
        let line = text
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .ok_or_else(|| AgentError::MissingField { path: path.to_owned(), field: name })?;
        let bad = || AgentError::BadField { path: path.to_owned(), field: name, line: line.to_owned() };
        let rest = line.split_once(':').map(|(_, r)| r.trim()).ok_or_else(bad)?;
        let number = rest.strip_suffix("kB").ok_or_else(bad)?.trim();
        number.parse().map_err(|_| bad())
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}

/// Reads and parses `path` (normally /proc/meminfo).
pub fn read_meminfo(path: &Path) -> Result<(u64, u64), AgentError> {
    let text = std::fs::read_to_string(path).map_err(|source| AgentError::Read { path: path.to_owned(), source })?;
    parse_meminfo(path, &text)
}

/// The device of the virtio-serial port called `name`: `/sys/class/virtio-ports/vportNpM/name`
/// holds the name, the device is `dev_dir/vportNpM` (devtmpfs creates it; there is no udev).
pub fn find_port(class_dir: &Path, dev_dir: &Path, name: &str) -> Result<PathBuf, AgentError> {
    let no_port = || AgentError::NoPort { name: name.to_owned(), dir: class_dir.to_owned() };
    let entries = std::fs::read_dir(class_dir).map_err(|_| no_port())?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim_end() == name))
        .map(|e| dev_dir.join(e.file_name()))
        .collect();
    found.sort();
    found.into_iter().next().ok_or_else(no_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:         230520 kB\nMemFree:          190000 kB\nMemAvailable:     185172 kB\nBuffers:               0 kB\n";

    #[test]
    fn parses_meminfo() {
        assert_eq!(parse_meminfo(Path::new("m"), MEMINFO).unwrap(), (230520, 185172));
    }

    #[test]
    fn meminfo_errors_name_the_field() {
        let e = parse_meminfo(Path::new("m"), "MemTotal: 5 kB\n").unwrap_err();
        assert!(e.to_string().contains("MemAvailable"), "{e}");
        let e = parse_meminfo(Path::new("m"), "MemTotal: x kB\nMemAvailable: 1 kB\n").unwrap_err();
        assert!(matches!(e, AgentError::BadField { field: "MemTotal", .. }), "{e}");
    }

    #[test]
    fn finds_the_port_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("class");
        for (port, name) in [("vport0p1", "other"), ("vport1p1", crate::PORT_NAME), ("vport1p2", "x")] {
            std::fs::create_dir_all(class.join(port)).unwrap();
            std::fs::write(class.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        let dev = dir.path().join("dev");
        assert_eq!(find_port(&class, &dev, crate::PORT_NAME).unwrap(), dev.join("vport1p1"));
        assert!(matches!(find_port(&class, &dev, "nope"), Err(AgentError::NoPort { .. })));
    }
}

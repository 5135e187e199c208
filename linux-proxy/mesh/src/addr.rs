//! Mesh addresses: every node has one IP address inside the tunnel, derived from its node id.
//!
//! - IPv6 (the default): `fd70:706e::/32` (a ULA prefix; `70 70 6e` is "ppn") followed by 32 zero
//!   bits and the 64-bit node id, so distinct node ids never collide.
//! - IPv4: `10.77.0.0/16`, host part from the last two bytes of the node id, mapped into
//!   `1..=65534` (never `.0.0` or `.255.255`). Only 16 bits: collisions become likely at a few
//!   hundred nodes, so use IPv4 only for small fleets or where the other side needs it.
//!
//! A mesh is one address family: a node reaches only peers whose mesh IP has its own family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv6 mesh prefix `fd70:706e::/32`.
pub const MESH_V6_PREFIX: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd70, 0x706e, 0, 0, 0, 0, 0, 0), 32);
/// The IPv4 mesh prefix `10.77.0.0/16`.
pub const MESH_V4_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 16);

/// The IPv6 mesh address of the node with id `node_id`: `fd70:706e:0:0:<node id>`.
pub fn mesh_ip_v6(node_id: [u8; 8]) -> IpAddr {
    let mut octets = MESH_V6_PREFIX.0.octets();
    octets[8..].copy_from_slice(&node_id);
    IpAddr::V6(Ipv6Addr::from(octets))
}

/// The IPv4 mesh address of the node with id `node_id`: `10.77.x.y`, see the module docs.
pub fn mesh_ip_v4(node_id: [u8; 8]) -> IpAddr {
    let raw = u16::from_be_bytes([node_id[6], node_id[7]]);
    let host = 1 + raw % 0xfffe; // 1..=65534
    let [x, y] = host.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, 77, x, y))
}

/// The default mesh address of a node: [`mesh_ip_v6`].
pub fn mesh_ip(node_id: [u8; 8]) -> IpAddr {
    mesh_ip_v6(node_id)
}

/// Whether `ip` lies in one of the mesh prefixes.
pub fn in_mesh_prefix(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(a) => a.octets()[..4] == MESH_V6_PREFIX.0.octets()[..4],
        IpAddr::V4(a) => a.octets()[..2] == MESH_V4_PREFIX.0.octets()[..2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_addresses() {
        let id = [0x1f, 0x2e, 0x3d, 0x4c, 0x5b, 0x6a, 0x79, 0x88];
        assert_eq!(mesh_ip(id), "fd70:706e::1f2e:3d4c:5b6a:7988".parse::<IpAddr>().unwrap());
        assert_eq!(mesh_ip_v4(id), IpAddr::V4(Ipv4Addr::new(10, 77, 0x79, 0x89)));
        assert_eq!(mesh_ip_v4([0; 8]), IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(mesh_ip_v4([0xff; 8]), IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)));
        assert!(in_mesh_prefix(mesh_ip(id)) && in_mesh_prefix(mesh_ip_v4(id)));
        assert!(!in_mesh_prefix("10.78.0.1".parse().unwrap()));
    }
}

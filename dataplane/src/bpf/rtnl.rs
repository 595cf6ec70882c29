//! The per-pod kernel changes (link up, host route, permanent neighbour) over
//! one rtnetlink request each, on the calling thread's netns.
//!
//! These run on every AddPod and RemovePod, which the CNI waits for during a
//! pod's ADD and DEL: one `ip` process each cost 2–5 ms, a netlink round trip
//! costs microseconds. Node-level setup, which runs once, stays with `ip`
//! (see `netcfg`). Messages are built by hand from the kernel's uapi layouts
//! (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/neighbour.h`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;
const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;

/// A request under construction: header, fixed part, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel's
        buf.extend_from_slice(fixed);
        Msg { buf }
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `struct rtmsg` for an IPv4 /32 in the main table.
fn rtmsg(protocol: u8, scope: u8, kind: u8) -> [u8; 12] {
    [
        libc::AF_INET as u8,
        32, // dst_len
        0,  // src_len
        0,  // tos
        RT_TABLE_MAIN,
        protocol,
        scope,
        kind,
        0,
        0,
        0,
        0, // flags
    ]
}

/// `struct ndmsg` for an IPv4 neighbour on `ifindex`.
fn ndmsg(ifindex: u32, state: u16) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0] = libc::AF_INET as u8;
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..10].copy_from_slice(&state.to_ne_bytes());
    m
}

/// `struct ifinfomsg` changing only IFF_UP.
fn ifinfomsg_up(ifindex: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..12].copy_from_slice(&IFF_UP.to_ne_bytes()); // flags
    m[12..16].copy_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    m
}

/// Sends one request and waits for its ACK; a NACK is the kernel's errno.
fn request(msg: Vec<u8>) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msg outlives the call; the address is a valid sockaddr_nl.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is writable for its whole length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let got = &buf[..n as usize];
        let mut off = 0;
        while off + NLMSG_HDRLEN <= got.len() {
            let len =
                u32::from_ne_bytes([got[off], got[off + 1], got[off + 2], got[off + 3]]) as usize;
            let kind = u16::from_ne_bytes([got[off + 4], got[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > got.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink reply",
                ));
            }
            if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                let p = off + NLMSG_HDRLEN;
                let errno = i32::from_ne_bytes([got[p], got[p + 1], got[p + 2], got[p + 3]]);
                return if errno == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-errno))
                };
            }
            off += len.next_multiple_of(4);
        }
    }
}

/// `ip link set dev <ifindex> up`.
pub fn link_up(ifindex: u32) -> io::Result<()> {
    request(Msg::new(RTM_NEWLINK, 0, &ifinfomsg_up(ifindex)).finish())
}

/// `ip -4 route replace <ip>/32 dev <ifindex> scope link proto <protocol>`.
pub fn route_replace(ip: Ipv4Addr, ifindex: u32, protocol: u8) -> io::Result<()> {
    let msg = Msg::new(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_REPLACE,
        &rtmsg(protocol, RT_SCOPE_LINK, RTN_UNICAST),
    )
    .attr(RTA_DST, &ip.octets())
    .attr(RTA_OIF, &ifindex.to_ne_bytes());
    request(msg.finish())
}

/// `ip -4 route del <ip>/32 proto <protocol>` (any device, any scope).
pub fn route_del(ip: Ipv4Addr, protocol: u8) -> io::Result<()> {
    let msg = Msg::new(RTM_DELROUTE, 0, &rtmsg(protocol, RT_SCOPE_NOWHERE, 0))
        .attr(RTA_DST, &ip.octets());
    request(msg.finish())
}

/// `ip -4 neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`.
pub fn neigh_replace(ip: Ipv4Addr, mac: [u8; 6], ifindex: u32) -> io::Result<()> {
    let msg = Msg::new(
        RTM_NEWNEIGH,
        NLM_F_CREATE | NLM_F_REPLACE,
        &ndmsg(ifindex, NUD_PERMANENT),
    )
    .attr(NDA_DST, &ip.octets())
    .attr(NDA_LLADDR, &mac);
    request(msg.finish())
}

/// `ip -4 neigh del <ip> dev <ifindex>`.
pub fn neigh_del(ip: Ipv4Addr, ifindex: u32) -> io::Result<()> {
    let msg = Msg::new(RTM_DELNEIGH, 0, &ndmsg(ifindex, 0)).attr(NDA_DST, &ip.octets());
    request(msg.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_request_layout() {
        let m = Msg::new(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &rtmsg(77, RT_SCOPE_LINK, RTN_UNICAST),
        )
        .attr(RTA_DST, &[10, 244, 1, 5])
        .attr(RTA_OIF, &7u32.to_ne_bytes())
        .finish();
        // header 16 + rtmsg 12 + two 8-byte attributes
        assert_eq!(m.len(), 44);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 44);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWROUTE);
        assert_eq!(
            u16::from_ne_bytes([m[6], m[7]]),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!(&m[16..28], &[2, 32, 0, 0, 254, 77, 253, 1, 0, 0, 0, 0]);
        assert_eq!(&m[28..36], &[8, 0, 1, 0, 10, 244, 1, 5]);
        assert_eq!(u16::from_ne_bytes([m[38], m[39]]), RTA_OIF);
    }

    #[test]
    fn lladdr_attribute_is_padded() {
        let m = Msg::new(RTM_NEWNEIGH, 0, &ndmsg(3, NUD_PERMANENT))
            .attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 1])
            .finish();
        // 16 + 12 + (4 + 6 → 12)
        assert_eq!(m.len(), 40);
        assert_eq!(
            u16::from_ne_bytes([m[28], m[29]]),
            10,
            "rta_len excludes padding"
        );
    }
}

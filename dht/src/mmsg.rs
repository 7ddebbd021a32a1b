//! Batched UDP receive and send for the tokio driver: `recvmmsg`/`sendmmsg` on Linux (one
//! system call for up to [`BATCH`] datagrams), one datagram per call elsewhere.
//!
//! This is the only unsafe code of the crate: the two system calls take raw pointers to
//! message headers, I/O vectors and socket addresses. Every pointer handed to the kernel
//! points into buffers owned by [`RecvBatch`] or by the caller's slices, which outlive
//! the call, and every length passed is the length of the buffer it describes.

use std::io;
use std::net::SocketAddr;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Room per received datagram. KRPC messages are far smaller; a longer one is cut by the
/// kernel, flagged, and dropped here.
pub const SLOT: usize = 4096;

/// Receive buffers for one batch, reused across calls.
pub struct RecvBatch {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    from: Vec<Option<SocketAddr>>,
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0; BATCH * SLOT],
            lens: vec![0; BATCH],
            from: vec![None; BATCH],
            #[cfg(target_os = "linux")]
            names: vec![zeroed_storage(); BATCH],
        }
    }
}

impl RecvBatch {
    /// Datagram `i` of the last receive: its source and payload (`None` if it was cut or
    /// came from an address family we do not know).
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let from = (*self.from.get(i)?)?;
        let start = i * SLOT;
        Some((from, &self.bufs[start..start + self.lens[i]]))
    }
}

#[cfg(target_os = "linux")]
fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero bytes are a valid value.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}

/// Receives up to [`BATCH`] datagrams without blocking; `WouldBlock` if none is queued.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn recv(socket: &tokio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    let mut iov: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    for (i, v) in iov.iter_mut().enumerate() {
        v.iov_base = batch.bufs[i * SLOT..].as_mut_ptr().cast();
        v.iov_len = SLOT;
    }
    // SAFETY: mmsghdr is plain old data; zero is a valid (empty) header.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, h) in hdrs.iter_mut().enumerate() {
        h.msg_hdr.msg_iov = &mut iov[i];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_name = (&mut batch.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: every header points to one iovec over its own SLOT bytes of `batch.bufs`
    // and to its own sockaddr_storage with its true size; all outlive the call, and the
    // count passed is the length of `hdrs`.
    use std::os::fd::AsRawFd;
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (i, h) in hdrs.iter().enumerate().take(n) {
        let cut = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        batch.lens[i] = (h.msg_len as usize).min(SLOT);
        batch.from[i] = if cut {
            None
        } else {
            from_storage(&batch.names[i])
        };
    }
    Ok(n)
}

#[cfg(target_os = "linux")]
fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in here (family AF_INET); the storage is
            // large and aligned enough for it.
            #[allow(unsafe_code)]
            let a: &libc::sockaddr_in =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6 (family AF_INET6).
            #[allow(unsafe_code)]
            let a: &libc::sockaddr_in6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(target_os = "linux")]
fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut s = zeroed_storage();
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            #[allow(unsafe_code)]
            let sin = unsafe {
                &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for a sockaddr_in6.
            #[allow(unsafe_code)]
            let sin6 = unsafe {
                &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

/// Sends up to [`BATCH`] datagrams without blocking; returns how many went out (at least
/// one), or the error of the first one (`WouldBlock` if the socket buffer is full).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn send(
    socket: &tokio::net::UdpSocket,
    datagrams: &[(SocketAddr, &[u8])],
) -> io::Result<usize> {
    let n = datagrams.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut names: [(libc::sockaddr_storage, libc::socklen_t); BATCH] =
        [(zeroed_storage(), 0); BATCH];
    let mut iov: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain old data; zero is a valid (empty) header.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (to, data)) in datagrams.iter().take(n).enumerate() {
        names[i] = to_storage(to);
        // The kernel only reads from iov_base when sending.
        iov[i].iov_base = data.as_ptr() as *mut libc::c_void;
        iov[i].iov_len = data.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_iov = &mut iov[i];
        h.msg_iovlen = 1;
        h.msg_name = (&mut names[i].0 as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = names[i].1;
    }
    // SAFETY: the first `n` headers each point to one iovec over a caller's slice (read
    // only by sendmmsg) and to an address of the stated length; all outlive the call.
    use std::os::fd::AsRawFd;
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// One datagram per call off Linux.
#[cfg(not(target_os = "linux"))]
pub fn recv(socket: &tokio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    let (n, from) = socket.try_recv_from(&mut batch.bufs[..SLOT])?;
    batch.lens[0] = n;
    batch.from[0] = Some(from);
    Ok(1)
}

#[cfg(not(target_os = "linux"))]
pub fn send(
    socket: &tokio::net::UdpSocket,
    datagrams: &[(SocketAddr, &[u8])],
) -> io::Result<usize> {
    match datagrams.first() {
        Some((to, data)) => socket.try_send_to(data, *to).map(|_| 1),
        None => Ok(0),
    }
}

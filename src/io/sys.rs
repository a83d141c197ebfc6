//! The crate's only `unsafe`: thin, documented wrappers over `poll(2)`, `setsockopt(2)` (TCP
//! keepalive) and glibc's `malloc_trim(3)`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

fn poll_one(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => d.as_millis().min(libc::c_int::MAX as u128) as libc::c_int,
    };
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid, exclusively borrowed pollfd array of length 1 that lives
        // for the whole call; poll does not retain the pointer.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Readiness, hang-up and errors all mean "try the operation now".
        return Ok(r > 0);
    }
}

/// Waits until `fd` is readable (or hung up / in error). `None` waits forever. Returns false
/// on timeout.
pub(crate) fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    poll_one(fd, libc::POLLIN, timeout)
}

/// Waits until `fd` is writable (or hung up / in error). Returns false on timeout.
pub(crate) fn wait_writable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    poll_one(fd, libc::POLLOUT, timeout)
}

/// Gives the heap memory that has been freed back to the OS (glibc's `malloc_trim(0)`; glibc
/// otherwise keeps it in its arenas for reuse). Elsewhere it does nothing. Takes a few
/// milliseconds at most on this crate's heaps; called when a server goes idle.
#[cfg(feature = "server")]
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the whole call and the length passed is its size;
    // setsockopt copies it and keeps no pointer. A bad fd is reported as an error, not UB.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn secs(d: Duration) -> libc::c_int {
    // The kernel takes whole seconds, at least 1 (TCP_KEEPIDLE/INTVL cap at 32767).
    d.as_secs().clamp(1, 32_767) as libc::c_int
}

/// Turns TCP keepalive on: the first probe after `idle` without traffic, then one every
/// `interval`, and the connection fails after `count` unanswered probes. (Where the kernel
/// has no per-socket knobs, only `SO_KEEPALIVE` is set.)
pub(crate) fn set_tcp_keepalive(
    fd: RawFd,
    idle: Duration,
    interval: Duration,
    count: u32,
) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(idle))?;
        set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(interval))?;
        let count = count.clamp(1, 127) as libc::c_int;
        set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (idle, interval, count, secs as fn(Duration) -> libc::c_int);
    Ok(())
}

/// Sets a socket's receive buffer (`SO_RCVBUF`; the kernel doubles it and enforces a
/// minimum). The simulator uses it on a listener for a peer whose TCP window closes quickly.
#[cfg(feature = "sim")]
pub(crate) fn set_recv_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
}

/// Sets a socket's send buffer (`SO_SNDBUF`; the kernel doubles it and enforces a minimum).
pub(crate) fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes)
}

/// Reads an integer socket option (tests check what was set).
#[cfg(test)]
pub(crate) fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live, exclusively borrowed and correctly sized for the
    // whole call; getsockopt writes at most `len` bytes and keeps no pointer.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

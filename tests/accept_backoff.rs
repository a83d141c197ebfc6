//! Out of file descriptors, the accept loop backs off instead of spinning, and serves again
//! once descriptors are free. In its own test binary: it lowers the process's descriptor
//! limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use common::Rig;
use twilio_realtime::agent::Agent;
use twilio_realtime::sim::fake_model::FakeModelConfig;

fn agent() -> Agent {
    Agent::new("Front", "You answer calls.")
}

fn open_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn set_nofile(soft: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local, valid rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    let rig = Rig::start_with(FakeModelConfig::default(), agent, |cfg| {
        cfg.header_timeout = Duration::from_secs(30);
    });
    let addr = match rig.addr {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    // Client sockets made now, connected once no descriptor is left for the server.
    let socks: Vec<RawFd> = (0..3)
        // SAFETY: socket(2) with constant arguments.
        .map(|_| unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) })
        .collect();
    assert!(socks.iter().all(|&s| s >= 0));
    let max_fd = *open_fds().iter().max().unwrap();
    let old = set_nofile(max_fd as u64 + 1);
    // Fill any hole below the limit, so the next descriptor anyone asks for fails.
    let mut fillers = Vec::new();
    loop {
        // SAFETY: dup(2) of stdin.
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            break;
        }
        fillers.push(fd);
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    for &s in &socks {
        // SAFETY: a valid sockaddr_in of the right length for an AF_INET socket.
        let r = unsafe {
            libc::connect(
                s,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }
    // The server cannot accept them for a second: EMFILE each time it tries.
    std::thread::sleep(Duration::from_secs(1));
    for fd in fillers {
        // SAFETY: closing descriptors this test opened.
        unsafe { libc::close(fd) };
    }
    set_nofile(old);
    // The pending connections are accepted now and served.
    // SAFETY: the socket is ours, connected, and owned by the TcpStream from here on.
    let mut first = unsafe { TcpStream::from_raw_fd(socks[0]) };
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut resp = String::new();
    let _ = first.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    for &s in &socks[1..] {
        // SAFETY: closing sockets this test opened.
        unsafe { libc::close(s) };
    }
    let stats = rig.stop();
    eprintln!(
        "accept errors while out of descriptors: {}",
        stats.accept_errors
    );
    // Backing off from 10 ms, doubling: about 7 attempts in that second. A loop that spun
    // would have failed tens of thousands of times.
    assert!(
        (1..=50).contains(&stats.accept_errors),
        "accept failed {} times in a second",
        stats.accept_errors
    );
}

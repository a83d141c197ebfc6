//! The duplex WebSocket layer over real loopback sockets, plain and TLS.

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tungstenite::Message;
use twilio_realtime::io::ws::{ClientRequest, Duplex, Incoming, WsConfig, WsConn, WsError};

mod common;
use common::tls_pair;

struct Pair {
    client: Duplex,
    client_rx: Receiver<Incoming>,
    server: Duplex,
    server_rx: Receiver<Incoming>,
    path: String,
    signature: Option<String>,
}

/// A server and a client, both our duplex layer.
fn pair(tls: bool) -> Pair {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (acceptor, connector) = if tls {
        let (a, c) = tls_pair();
        (Some(a), Some(c))
    } else {
        (None, None)
    };
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let (conn, head) = WsConn::accept(tcp, acceptor.as_ref(), &WsConfig::default()).unwrap();
        tx.send((conn, head)).unwrap();
    });
    let scheme = if tls { "wss" } else { "ws" };
    let host = if tls { "localhost" } else { "127.0.0.1" };
    let req = ClientRequest::new(format!("{scheme}://{host}:{port}/media-stream?x=1"))
        .bearer("test-key")
        .header("X-Twilio-Signature", "c2lnbmF0dXJl");
    let cfg = {
        let mut o = WsConfig::default();
        o.tls_connector = connector;
        o
    };
    let client = WsConn::connect(&req, &cfg).unwrap();
    server.join().unwrap();
    let (server_conn, head) = rx.recv().unwrap();
    assert_eq!(head.header("authorization"), Some("Bearer test-key"));
    let (client, client_rx) = client.spawn_channel("cl").unwrap();
    let (server, server_rx) = server_conn.spawn_channel("sv").unwrap();
    Pair {
        client,
        client_rx,
        server,
        server_rx,
        path: head.target.clone(),
        signature: head.header("x-twilio-signature").map(str::to_owned),
    }
}

fn message(i: usize) -> String {
    // varied sizes, up to ~8 KB
    let pad = "x".repeat((i * 37) % 8000);
    format!("{i}:{pad}")
}

fn exchange(tls: bool) {
    const N: usize = 10_000;
    let p = pair(tls);
    assert_eq!(p.path, "/media-stream?x=1");
    assert_eq!(p.signature.as_deref(), Some("c2lnbmF0dXJl"));
    let cs = p.client.sender();
    let ss = p.server.sender();
    // both sides send at once; half through the writer queue, half written directly
    let a = thread::spawn(move || {
        for i in 0..N {
            let m = Message::text(message(i));
            if i % 2 == 0 {
                cs.send(m).unwrap()
            } else {
                cs.send_now(m).unwrap()
            }
        }
    });
    let b = thread::spawn(move || {
        for i in 0..N {
            ss.send(Message::text(message(i))).unwrap();
        }
    });
    let check = |rx: Receiver<Incoming>, ordered: bool| {
        thread::spawn(move || {
            let mut seen = vec![false; N];
            let mut last = None;
            for _ in 0..N {
                match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
                    Incoming::Text(t) => {
                        let (i, pad) = t.as_str().split_once(':').unwrap();
                        let i: usize = i.parse().unwrap();
                        assert_eq!(pad.len(), (i * 37) % 8000, "message {i} complete");
                        if ordered {
                            assert_eq!(
                                Some(i),
                                last.map_or(Some(0), |l: usize| Some(l + 1)),
                                "in order"
                            );
                        }
                        assert!(!seen[i]);
                        seen[i] = true;
                        last = Some(i);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(seen.iter().all(|&s| s));
        })
    };
    // the server side gets queue + send_now from one thread: each path in order, all arrive
    let c1 = check(p.server_rx, false);
    let c2 = check(p.client_rx, true);
    a.join().unwrap();
    b.join().unwrap();
    c1.join().unwrap();
    c2.join().unwrap();
    p.client.close();
    p.client.join();
    p.server.join();
}

#[test]
fn ten_thousand_each_way_plain() {
    exchange(false);
}

#[test]
fn ten_thousand_each_way_tls() {
    exchange(true);
}

#[test]
fn send_now_from_one_thread_keeps_order() {
    let p = pair(false);
    let s = p.client.sender();
    for i in 0..2000 {
        s.send_now(Message::text(i.to_string())).unwrap();
    }
    for i in 0..2000 {
        match p.server_rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            Incoming::Text(t) => assert_eq!(t.as_str(), i.to_string()),
            o => panic!("{o:?}"),
        }
    }
    p.client.close();
    p.client.join();
    p.server.join();
}

fn close_from_third_thread(tls: bool) {
    let p = pair(tls);
    let sender = p.server.sender();
    let t0 = Instant::now();
    thread::spawn(move || sender.close()).join().unwrap();
    p.server.join();
    let server_done = t0.elapsed();
    p.client.join();
    let both = t0.elapsed();
    eprintln!("tls={tls}: server threads done in {server_done:?}, both sides in {both:?}");
    assert!(server_done < Duration::from_millis(100), "{server_done:?}");
    // the client saw a clean close
    let mut closed = false;
    while let Ok(m) = p.client_rx.try_recv() {
        closed |= matches!(m, Incoming::Closed(Some(_)));
    }
    assert!(closed);
}

#[test]
fn close_from_a_third_thread_ends_both_threads_plain() {
    close_from_third_thread(false);
}

#[test]
fn close_from_a_third_thread_ends_both_threads_tls() {
    close_from_third_thread(true);
}

#[test]
fn abort_needs_no_peer_cooperation() {
    let p = pair(false);
    let t0 = Instant::now();
    p.server.sender().abort();
    p.server.join();
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    // sending after close is an error, not a panic
    assert!(
        p.client.sender().send_now(Message::text("x")).is_err() || {
            // the client may not have seen the reset yet; it will shortly
            thread::sleep(Duration::from_millis(200));
            p.client.sender().send(Message::text("x")).is_err()
        }
    );
    p.client.close();
    p.client.join();
}

#[test]
fn ping_from_the_peer_is_answered_while_idle() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let (conn, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
        conn.spawn_channel("sv").unwrap()
    });
    let (mut peer, _) = tungstenite::connect(format!("ws://{addr}/")).unwrap();
    let (duplex, _rx) = server.join().unwrap();
    thread::sleep(Duration::from_millis(50)); // our side is idle, blocked in poll
    peer.send(Message::Ping(b"hello".to_vec().into())).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = peer.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    match peer.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"hello"),
        other => panic!("unexpected {other:?}"),
    }
    duplex.close();
    duplex.join();
}

#[test]
fn a_peer_that_resets_surfaces_as_an_error_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let (conn, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
        conn.spawn_channel("sv").unwrap()
    });
    let (peer, _) = tungstenite::connect(format!("ws://{addr}/")).unwrap();
    let (duplex, rx) = server.join().unwrap();
    // SO_LINGER 0, then drop: the kernel sends RST
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = peer.get_ref() {
        set_linger_zero(s);
    }
    drop(peer);
    match rx
        .recv_timeout(Duration::from_secs(5))
        .expect("reported, not hung")
    {
        Incoming::Error(_) | Incoming::Closed(_) => {}
        other => panic!("unexpected {other:?}"),
    }
    duplex.join();
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, pointer to a live linger struct of the size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn refused_rejected_and_non_upgrade_are_typed_errors() {
    // nothing listening
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let e = WsConn::connect(
        &ClientRequest::new(format!("ws://127.0.0.1:{port}/")),
        &WsConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(e, WsError::Connect(_)), "{e}");
    assert!(matches!(
        WsConn::connect(&ClientRequest::new("http://x/"), &WsConfig::default()),
        Err(WsError::BadUrl(_))
    ));
    // a server answering 401
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let _ = twilio_realtime::io::http::read_head(&mut s, &Default::default());
        twilio_realtime::io::http::write_response(&mut s, 401, "text/plain", &[], b"no").unwrap();
    });
    let e = WsConn::connect(
        &ClientRequest::new(format!("ws://{addr}/")),
        &WsConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(e, WsError::Rejected { status: 401 }), "{e}");
    t.join().unwrap();
    // a plain GET is not an upgrade
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        WsConn::accept(s, None, &WsConfig::default()).map(|_| ())
    });
    let mut c = TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"GET /media-stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(matches!(t.join().unwrap(), Err(WsError::NotAnUpgrade(_))));
}

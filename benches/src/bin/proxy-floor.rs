//! The floor of an HTTP relay on this machine, for `benches/wrk/watchdog.sh`: the least
//! work any proxy in front of an upstream can do per request. Each accepted connection gets
//! its own upstream connection, and the relay passes bytes back and forth: one read from the
//! client, one write to the upstream, one read from the upstream, one write to the client.
//! No HTTP parsing, no headers, no timeouts, no limits: it is correct only while every
//! request and every response arrives in one read (wrk's small POST and the fixture's small
//! answer), so it is a measuring stick, not a proxy.
//!
//! Threads as the watchdog serves (`watchdog_threads`, default the number of CPUs): each with
//! its own single-threaded runtime and its own `SO_REUSEPORT` listener on the address.
//!
//! Usage: `proxy-floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]`

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |i: usize| args.get(i).and_then(|a| a.parse::<SocketAddr>().ok());
    let (Some(listen), Some(upstream)) = (addr(0), addr(1)) else {
        eprintln!("usage: proxy-floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
        return ExitCode::from(2);
    };
    let threads = match args.get(2).map(|t| t.parse::<usize>()) {
        None => std::thread::available_parallelism().map_or(1, usize::from),
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("proxy-floor: THREADS must be a positive number");
            return ExitCode::from(2);
        }
    };
    let handles: Vec<_> =
        (0..threads).map(|_| std::thread::spawn(move || serve(listen, upstream))).collect();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("proxy-floor: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
    ExitCode::SUCCESS
}

/// One serving thread: its own runtime and listener.
fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async move {
        let socket = if listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseport(true)?;
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        loop {
            let (down, _) = listener.accept().await?;
            tokio::spawn(async move {
                if let Err(e) = relay(down, upstream).await {
                    eprintln!("proxy-floor: {e}");
                }
            });
        }
    })
}

/// Passes one client's requests to its own upstream connection and the answers back.
async fn relay(mut down: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = down.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        up.write_all(&buf[..n]).await?;
        let m = up.read(&mut buf).await?;
        if m == 0 {
            return Ok(());
        }
        down.write_all(&buf[..m]).await?;
    }
}

//! Loadgen against a bare sink: binds the `--target` itself, drains and decodes every
//! datagram on a second thread, and prints the loadgen report next to what the sink saw.
//! The sender-side ceiling for the ingest benchmarks.
//!
//! ```text
//! cargo run --release -p tollgate-loadgen --example sink_bench -- \
//!     --mode flood --batch 32 --duration 5 --target udp:127.0.0.1:17171
//! ```

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use clap::Parser;
use tollgate_loadgen::{LoadgenArgs, Target};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

/// Receives one datagram into the buffer, returning its length.
type Recv = Box<dyn FnMut(&mut [u8]) -> std::io::Result<usize> + Send>;

fn main() {
    let cli = Cli::parse();
    let recv: Recv = match &cli.args.target {
        Target::Udp(addr) => {
            let socket = UdpSocket::bind(addr).expect("bind the UDP target");
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            Box::new(move |buf| socket.recv(buf))
        }
        Target::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let socket = UnixDatagram::bind(path).expect("bind the unix target");
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            Box::new(move |buf| socket.recv(buf))
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let sink = {
        let done = Arc::clone(&done);
        let mut recv = recv;
        std::thread::spawn(move || {
            let (mut datagrams, mut events, mut malformed) = (0u64, 0u64, 0u64);
            let mut buf = vec![0u8; 65_536];
            loop {
                match recv(&mut buf) {
                    Ok(len) => {
                        datagrams += 1;
                        for event in tollgate_events::decode(&buf[..len]).events {
                            match event {
                                Ok(_) => events += 1,
                                Err(_) => malformed += 1,
                            }
                        }
                    }
                    Err(_) if done.load(Relaxed) => return (datagrams, events, malformed),
                    Err(_) => {}
                }
            }
        })
    };
    let report = tollgate_loadgen::run(&cli.args, &AtomicBool::new(false)).expect("loadgen run");
    done.store(true, Relaxed);
    let (datagrams, events, malformed) = sink.join().unwrap();
    println!("{report}");
    println!(
        "  sink      {datagrams} datagrams, {events} events, {malformed} malformed ({:.1}% of datagrams lost)",
        100.0 * (1.0 - datagrams as f64 / report.datagrams_sent.max(1) as f64)
    );
    if let Target::Unix(path) = &cli.args.target {
        let _ = std::fs::remove_file(path);
    }
}

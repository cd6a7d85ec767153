//! Keyed 128-bit fingerprints of Call-IDs (crate `tollgate-usage`, module `fingerprint`).
//!
//! Compares the three candidate keyed hashes on 20-, 40- and 80-byte Call-IDs:
//! `blake3` (keyed mode), `siphash13` (SipHash-1-3-128) and `xxh3` (xxh3-128 with a 192-byte
//! secret derived from the key, the hot path). Each is timed through
//! `Fingerprinter::call`, i.e. exactly what `Tables::apply` does for an untagged call;
//! `xxh3_tagged` adds a 10-byte From-tag (two hashes, XORed). The choice and the figures are
//! recorded in the `fingerprint` module doc.
//!
//! Run: `cargo bench --bench fingerprint` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_events::CallRef;
use tollgate_usage::FingerprintKey;
use tollgate_usage::fingerprint::{Algorithm, Fingerprinter};

const CALL_ID_LENS: [usize; 3] = [20, 40, 80];

/// A Call-ID of `len` bytes shaped like a real one (`hex@host`).
fn call_id(len: usize) -> Vec<u8> {
    let base =
        b"a84b4c76e66710f3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0@pc33.atlanta.example.com";
    let mut id: Vec<u8> = base.iter().copied().cycle().take(len).collect();
    if let Some(at) = id.get_mut(len / 2) {
        *at = b'@';
    }
    id
}

fn fingerprint(c: &mut Criterion) {
    let key = FingerprintKey([0x5a; 32]);
    let mut group = c.benchmark_group("fingerprint");
    for len in CALL_ID_LENS {
        let id = call_id(len);
        group.throughput(Throughput::Elements(1));
        for (name, algorithm) in [
            ("blake3", Algorithm::Blake3),
            ("siphash13", Algorithm::SipHash13),
            ("xxh3", Algorithm::Xxh3),
        ] {
            let f = Fingerprinter::with_algorithm(&key, algorithm);
            group.bench_with_input(BenchmarkId::new(name, len), &id, |b, id| {
                b.iter(|| {
                    f.call(black_box(CallRef {
                        call_id: id,
                        from_tag: None,
                    }))
                });
            });
        }
        let f = Fingerprinter::with_algorithm(&key, Algorithm::Xxh3);
        group.bench_with_input(BenchmarkId::new("xxh3_tagged", len), &id, |b, id| {
            b.iter(|| {
                f.call(black_box(CallRef {
                    call_id: id,
                    from_tag: Some(b"1928301774"),
                }))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fingerprint);
criterion_main!(benches);

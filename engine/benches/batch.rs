//! Criterion benchmark of the append path's CPU work per batch: validation (CRC-32C over
//! the batch) and patching, for the batch sizes the engine benchmark uses.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn batch_of(size: usize) -> Vec<u8> {
    let mut b = vec![0u8; size];
    b[8..12].copy_from_slice(&((size - 12) as i32).to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&0i32.to_be_bytes());
    b[57..61].copy_from_slice(&1i32.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_validate");
    for size in [16 * 1024, 1024 * 1024] {
        let batch = batch_of(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &batch, |b, batch| {
            b.iter(|| spate_engine::batch::validate(batch, usize::MAX).expect("valid"));
        });
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);

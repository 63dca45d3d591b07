//! What each record carries: its size, its key, and its value.
//!
//! A value starts with the record's due time (8 bytes, big-endian nanoseconds on the run
//! clock), so a consumer in the same run measures end-to-end latency from it; the rest
//! is drawn from a pool of random bytes (incompressible, as OpenMessaging Benchmark's
//! payload files are) or of text-like words (which compress about as logs and JSON do).
//! Sizes are fixed or uniform over a range; keys are absent, uniform over a key space,
//! or Zipf-distributed over it (a few hot keys, a long tail), and name a partition by
//! Kafka's murmur2 partitioner.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::limits::{KEYS_MAX, PAYLOAD_POOL_BYTES, RECORD_BYTES_MAX};

/// Bytes at the start of every value: the due time.
pub const STAMP_BYTES: usize = 8;

/// Record value sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeDist {
    Fixed(usize),
    /// Uniform over `min..=max`.
    Uniform {
        min: usize,
        max: usize,
    },
}

impl SizeDist {
    pub fn max(&self) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { max, .. } => max,
        }
    }

    pub fn mean(&self) -> f64 {
        match *self {
            SizeDist::Fixed(n) => n as f64,
            SizeDist::Uniform { min, max } => (min + max) as f64 / 2.0,
        }
    }

    fn min(&self) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { min, .. } => min,
        }
    }
}

impl FromStr for SizeDist {
    type Err = String;

    /// `1024`, or `100..4096` for uniform sizes.
    fn from_str(text: &str) -> Result<SizeDist, String> {
        let number = |t: &str| {
            t.trim().parse::<usize>().map_err(|_| {
                format!("invalid record size \"{text}\": expected N or MIN..MAX bytes")
            })
        };
        let dist = match text.split_once("..") {
            Some((min, max)) => SizeDist::Uniform {
                min: number(min)?,
                max: number(max)?,
            },
            None => SizeDist::Fixed(number(text)?),
        };
        if dist.min() > dist.max() {
            return Err(format!("invalid record size \"{text}\": MIN is above MAX"));
        }
        if dist.min() < STAMP_BYTES || dist.max() > RECORD_BYTES_MAX {
            return Err(format!(
                "record size \"{text}\" out of range: {STAMP_BYTES}..={RECORD_BYTES_MAX} bytes \
                 (each value carries an {STAMP_BYTES}-byte timestamp)"
            ));
        }
        Ok(dist)
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDist::Fixed(n) => write!(f, "{n}"),
            SizeDist::Uniform { min, max } => write!(f, "{min}..{max}"),
        }
    }
}

/// Record keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDist {
    /// No key: the producer fills one partition's batch at a time (sticky partitioning).
    None,
    /// Keys `0..n`, each equally likely.
    Uniform(u64),
    /// Keys `0..n`, key k with weight 1/(k+1)^exponent.
    Zipf { keys: u64, exponent: f64 },
}

impl FromStr for KeyDist {
    type Err = String;

    /// `none`, `uniform:N` or `zipf:N:EXPONENT`.
    fn from_str(text: &str) -> Result<KeyDist, String> {
        let bad = || {
            format!("invalid key distribution \"{text}\": expected none, uniform:N or zipf:N:EXPONENT with 1 <= N <= {KEYS_MAX}")
        };
        let parts: Vec<&str> = text.split(':').collect();
        let keys = |t: &str| {
            t.parse::<u64>()
                .ok()
                .filter(|n| (1..=KEYS_MAX).contains(n))
                .ok_or_else(bad)
        };
        match parts.as_slice() {
            ["none"] => Ok(KeyDist::None),
            ["uniform", n] => Ok(KeyDist::Uniform(keys(n)?)),
            ["zipf", n, s] => {
                let exponent = s
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 10.0)
                    .ok_or_else(bad)?;
                Ok(KeyDist::Zipf {
                    keys: keys(n)?,
                    exponent,
                })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::None => write!(f, "none"),
            KeyDist::Uniform(n) => write!(f, "uniform:{n}"),
            KeyDist::Zipf { keys, exponent } => write!(f, "zipf:{keys}:{exponent}"),
        }
    }
}

/// Both distributions travel in JSON as their text form.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(SizeDist);
serde_as_text!(KeyDist);

/// The filler of record values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Filler {
    /// Random bytes: incompressible.
    Random,
    /// Words of a small vocabulary: compresses like text.
    Text,
}

/// Makes the records of one producer.
#[derive(Debug)]
pub struct RecordMaker {
    rng: StdRng,
    sizes: SizeDist,
    keys: KeyDist,
    /// Cumulative Zipf weights, normalised to 1; empty unless Zipf.
    zipf_cdf: Vec<f64>,
    pool: Vec<u8>,
    pool_at: usize,
    value: Vec<u8>,
    key: Vec<u8>,
}

impl RecordMaker {
    pub fn new(seed: u64, sizes: SizeDist, keys: KeyDist, filler: Filler) -> RecordMaker {
        let mut rng = StdRng::seed_from_u64(seed);
        let pool_bytes = PAYLOAD_POOL_BYTES.max(2 * sizes.max());
        let pool = match filler {
            Filler::Random => (0..pool_bytes).map(|_| rng.gen()).collect(),
            Filler::Text => text_pool(&mut rng, pool_bytes),
        };
        let zipf_cdf = match keys {
            KeyDist::Zipf { keys, exponent } => zipf_cdf(keys, exponent),
            _ => Vec::new(),
        };
        RecordMaker {
            rng,
            sizes,
            keys,
            zipf_cdf,
            pool,
            pool_at: 0,
            value: Vec::with_capacity(sizes.max()),
            key: Vec::with_capacity(24),
        }
    }

    /// The next record: its key (if any) and its value stamped with `due_ns`.
    pub fn next(&mut self, due_ns: u64) -> (Option<&[u8]>, &[u8]) {
        let size = match self.sizes {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { min, max } => self.rng.gen_range(min..=max),
        };
        self.value.clear();
        self.value.extend_from_slice(&due_ns.to_be_bytes());
        let filler = size - STAMP_BYTES;
        if self.pool_at + filler > self.pool.len() {
            self.pool_at = 0;
        }
        self.value
            .extend_from_slice(&self.pool[self.pool_at..self.pool_at + filler]);
        // Step by an odd amount so consecutive values differ.
        self.pool_at += filler / 2 + 1;
        let key = match self.keys {
            KeyDist::None => None,
            KeyDist::Uniform(n) => Some(self.rng.gen_range(0..n)),
            KeyDist::Zipf { .. } => {
                let u: f64 = self.rng.gen();
                Some(self.zipf_cdf.partition_point(|&c| c < u) as u64)
            }
        };
        let key = key.map(|k| {
            use std::io::Write;
            self.key.clear();
            write!(self.key, "key-{k}").expect("writing to a Vec");
            &self.key[..]
        });
        (key, &self.value)
    }
}

/// The due time a value starts with, if it is long enough to carry one.
pub fn stamp_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        value.get(..STAMP_BYTES)?.try_into().ok()?,
    ))
}

fn zipf_cdf(keys: u64, exponent: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(keys as usize);
    let mut sum = 0.0;
    for k in 1..=keys {
        sum += 1.0 / (k as f64).powf(exponent);
        cdf.push(sum);
    }
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

fn text_pool(rng: &mut StdRng, bytes: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "broker",
        "partition",
        "offset",
        "record",
        "\"id\":",
        "\"user\":",
        "\"ts\":",
        "GET",
        "/api/v1/orders",
        "200",
        "latency",
        "INFO",
        "WARN",
        "consumer",
        "group",
        "segment",
        "{",
        "}",
        "true",
        "false",
        "null",
        "session",
        "event",
        "click",
    ];
    let mut out = Vec::with_capacity(bytes + 32);
    while out.len() < bytes {
        out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
        out.push(b' ');
        if rng.gen_ratio(1, 8) {
            out.extend_from_slice(rng.gen_range(0..100_000u32).to_string().as_bytes());
            out.push(b' ');
        }
    }
    out.truncate(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_parse_print_and_refuse_nonsense() {
        for text in ["1024", "100..4096", "none", "uniform:1000", "zipf:1000:1.1"] {
            let printed = match text.parse::<SizeDist>() {
                Ok(d) => d.to_string(),
                Err(_) => text.parse::<KeyDist>().unwrap().to_string(),
            };
            assert_eq!(printed, text);
        }
        for bad in ["", "x", "4..2", "7", "99999999999", "1..17000000"] {
            assert!(bad.parse::<SizeDist>().is_err(), "{bad}");
        }
        for bad in [
            "zipf:10",
            "uniform:0",
            "zipf:10:-1",
            "uniform:99999999",
            "some",
        ] {
            assert!(bad.parse::<KeyDist>().is_err(), "{bad}");
        }
    }

    #[test]
    fn values_carry_their_due_time_and_size() {
        let mut maker = RecordMaker::new(
            1,
            SizeDist::Uniform { min: 16, max: 64 },
            KeyDist::None,
            Filler::Random,
        );
        for due in 0..1_000u64 {
            let (key, value) = maker.next(due * 7);
            assert!(key.is_none());
            assert!((16..=64).contains(&value.len()));
            assert_eq!(stamp_of(value), Some(due * 7));
        }
        assert_eq!(stamp_of(&[1, 2, 3]), None);
    }

    #[test]
    fn zipf_keys_favour_the_first_ranks_by_the_exponent() {
        let keys = KeyDist::Zipf {
            keys: 100,
            exponent: 1.0,
        };
        let mut maker = RecordMaker::new(7, SizeDist::Fixed(16), keys, Filler::Text);
        let mut counts = std::collections::HashMap::<Vec<u8>, u64>::new();
        for _ in 0..200_000 {
            let (key, _) = maker.next(0);
            *counts.entry(key.unwrap().to_vec()).or_default() += 1;
        }
        let first = counts[&b"key-0".to_vec()] as f64;
        let second = counts[&b"key-1".to_vec()] as f64;
        let tenth = counts[&b"key-9".to_vec()] as f64;
        // Weights 1, 1/2, 1/10: the ratios hold within sampling noise.
        assert!((first / second - 2.0).abs() < 0.15, "{first} {second}");
        assert!((first / tenth - 10.0).abs() < 1.0, "{first} {tenth}");
        assert!(counts.len() <= 100);
    }

    #[test]
    fn text_values_compress_and_random_ones_do_not() {
        let compressed = |filler| {
            let mut maker = RecordMaker::new(3, SizeDist::Fixed(4096), KeyDist::None, filler);
            let (_, value) = maker.next(0);
            spate_engine::compression::compress(spate_engine::batch::Compression::Zstd, value)
                .unwrap()
                .len()
        };
        assert!(compressed(Filler::Text) < 4096 / 2);
        assert!(compressed(Filler::Random) > 4000);
    }
}

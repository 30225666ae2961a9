//! Which partition an account's records belong to: the key hash of the producers'
//! partitioner (librdkafka's CRC-32 or the Java clients' murmur2), chosen once per
//! deployment in `kafka.partitioner` and used by every producer and by the run loop.

use serde::{Deserialize, Serialize};

/// The key hash that decides an account's partition. Every producer of one deployment
/// must use the same one, or an account's records land in two partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioner {
    /// CRC-32 (IEEE) of the key, modulo the partition count: librdkafka's default
    /// (`consistent_random`), so Go, Python and C producers on librdkafka.
    #[default]
    Crc32,
    /// Kafka's murmur2 of the key, made positive, modulo the count: the Java clients'
    /// default and Kafka Streams' (librdkafka's `murmur2_random`).
    Murmur2,
}

impl Partitioner {
    /// The partition of a record keyed by `key` among `partitions`.
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        if partitions <= 0 {
            return 0;
        }
        let hash = match self {
            Partitioner::Crc32 => crc32(key),
            // Java's `toPositive`: the sign bit cleared, not the absolute value.
            Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
        };
        (hash % partitions as u32) as i32
    }

    /// The name of the same partitioner in librdkafka's `partitioner` setting.
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            Partitioner::Crc32 => "consistent_random",
            Partitioner::Murmur2 => "murmur2_random",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Crc32 => "crc32",
            Partitioner::Murmur2 => "murmur2",
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, the zlib one), as librdkafka's `rd_crc32`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as a `u32` holding
/// Java's `int` bits.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // Java's switch falls through from the highest remaining byte down.
        for (i, &byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// The vectors of Kafka's own `UtilsTest.testMurmur2` (Java `int` results).
    #[test]
    fn murmur2_matches_kafkas_java_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, java) in cases {
            assert_eq!(
                murmur2(key) as i32,
                java,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// Partitions by the published algorithm, `toPositive(murmur2(key)) % n`, worked from
    /// the Java values above: -973932308 & 0x7fffffff = 1173551340, and so on.
    #[test]
    fn murmur2_partitions_are_to_positive_modulo_the_count() {
        assert_eq!(Partitioner::Murmur2.partition(b"21", 6), 1_173_551_340 % 6);
        assert_eq!(
            Partitioner::Murmur2.partition(b"foobar", 12),
            1_357_151_166 % 12
        );
        assert_eq!(Partitioner::Murmur2.partition(b"abc", 7), 479_470_107 % 7);
        assert_eq!(Partitioner::Murmur2.partition(b"abc", 0), 0);
    }

    /// Each hash is where librdkafka's own partitioner of that name puts the key: the C
    /// functions called directly (a key never takes the random branch, which is the only
    /// one that reads the topic handle).
    #[test]
    fn partitions_match_librdkafkas_partitioners() {
        type Native = unsafe extern "C" fn(
            *const rdkafka::bindings::rd_kafka_topic_t,
            *const std::ffi::c_void,
            usize,
            i32,
            *mut std::ffi::c_void,
            *mut std::ffi::c_void,
        ) -> i32;
        let natives: [(Partitioner, Native); 2] = [
            (
                Partitioner::Crc32,
                rdkafka::bindings::rd_kafka_msg_partitioner_consistent_random,
            ),
            (
                Partitioner::Murmur2,
                rdkafka::bindings::rd_kafka_msg_partitioner_murmur2_random,
            ),
        ];
        for (ours, native) in natives {
            for partitions in [1, 2, 3, 6, 7, 12, 64] {
                for i in 0..500 {
                    let key = format!("acct-{i:04}-{}", "x".repeat(i % 13));
                    // SAFETY: a non-empty key with a null topic handle: the keyed branch
                    // only hashes the key.
                    let theirs = unsafe {
                        native(
                            std::ptr::null(),
                            key.as_ptr().cast(),
                            key.len(),
                            partitions,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    };
                    assert_eq!(
                        ours.partition(key.as_bytes(), partitions),
                        theirs,
                        "{} key {key}",
                        ours.as_str()
                    );
                }
            }
        }
    }
}

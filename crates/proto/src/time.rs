//! `google.protobuf.Timestamp` to and from UTC date-times.

use chrono::{DateTime, Utc};
pub use prost_types::Timestamp as ProtoTimestamp;
use prost_types::Timestamp;

pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// The date-time of a timestamp, or a description of why it is not one (negative nanos, or
/// beyond the year 9999 and so past what any agreement means).
pub fn datetime(timestamp: &Timestamp) -> Result<DateTime<Utc>, String> {
    let nanos =
        u32::try_from(timestamp.nanos).map_err(|_| "nanos must not be negative".to_owned())?;
    DateTime::from_timestamp(timestamp.seconds, nanos)
        .filter(|at| at.timestamp() < 253_402_300_800)
        .ok_or_else(|| "must be a valid time before the year 10000".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_to_the_microsecond() {
        let at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        assert_eq!(datetime(&timestamp(at)), Ok(at));
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        assert!(
            datetime(&Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
        assert!(
            datetime(&Timestamp {
                seconds: 300_000_000_000,
                nanos: 0
            })
            .is_err()
        );
    }
}

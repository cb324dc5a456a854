//! The mqtt sink's pure parts: what a PUBACK reason code means.

use super::*;

#[test]
fn mqtt5_puback_reasons() {
    assert!(matches!(v5_ack(1, PubAckReason::Success), Note::Acked(1)));
    assert!(matches!(
        v5_ack(2, PubAckReason::NoMatchingSubscribers),
        Note::Acked(2)
    ));
    for (r, permanent) in [
        (PubAckReason::NotAuthorized, true),
        (PubAckReason::TopicNameInvalid, true),
        (PubAckReason::PayloadFormatInvalid, true),
        (PubAckReason::QuotaExceeded, false),
        (PubAckReason::UnspecifiedError, false),
    ] {
        match v5_ack(3, r) {
            Note::Refused { permanent: p, .. } => assert_eq!(p, permanent, "{r:?}"),
            other => panic!("{r:?}: {other:?}"),
        }
    }
}

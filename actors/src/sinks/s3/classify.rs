//! What an S3 error means for a batch (the failure classes of docs/operations.md).

use crate::sinks::PublishResult;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Error codes that refuse the gateway (credentials, bucket, region), not a record.
const REFUSES_THE_GATEWAY: [&str; 8] = [
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "ExpiredToken",
    "InvalidToken",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
];

pub fn classify<E>(e: &SdkError<E, HttpResponse>, records: usize) -> PublishResult
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let message = se.err().message().unwrap_or("");
            by_code(status, code, message, records)
        }
        SdkError::TimeoutError(_) => PublishResult::outage("S3: timed out"),
        SdkError::DispatchFailure(f) => {
            PublishResult::outage(format!("S3 unreachable: {:?}", f.as_connector_error()))
        }
        SdkError::ResponseError(_) => {
            PublishResult::outage(format!("S3: unreadable answer: {}", DisplayErrorContext(e)))
        }
        // A request the SDK could not build: a bug or a bad setting, not the store's state.
        _ => PublishResult::Transient(format!("S3: {}", DisplayErrorContext(e))),
    }
}

/// An S3 error answer, by HTTP status and error code.
pub fn by_code(status: u16, code: &str, message: &str, records: usize) -> PublishResult {
    let what = format!("S3 {status} {code}: {message}");
    match (status, code) {
        (_, "EntityTooLarge") | (413, _) => PublishResult::TooBig(if records == 1 {
            format!("record too large for the store: {what}")
        } else {
            what
        }),
        (_, c) if REFUSES_THE_GATEWAY.contains(&c) => PublishResult::outage(format!(
            "{what} — the store refuses the gateway (credentials, bucket or region); held \
             until fixed"
        )),
        (_, "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout")
        | (429 | 408 | 500..=599, _) => PublishResult::outage(what),
        (401 | 403 | 404 | 301 | 307, _) => PublishResult::outage(format!(
            "{what} — the store refuses the gateway; held until fixed"
        )),
        // The body arrived damaged: worth another attempt, which counts.
        (_, "BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch") => {
            PublishResult::Transient(what)
        }
        _ => PublishResult::Permanent(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_s3_answer_means() {
        assert!(matches!(
            by_code(503, "SlowDown", "", 5),
            PublishResult::Outage { .. }
        ));
        assert!(matches!(
            by_code(500, "InternalError", "", 5),
            PublishResult::Outage { .. }
        ));
        for code in ["AccessDenied", "NoSuchBucket", "InvalidAccessKeyId"] {
            assert!(
                matches!(by_code(403, code, "", 5), PublishResult::Outage { reason, .. } if reason.contains(code)),
                "{code} holds the sink"
            );
        }
        assert!(matches!(
            by_code(400, "EntityTooLarge", "", 5),
            PublishResult::TooBig(_)
        ));
        assert!(matches!(
            by_code(400, "BadDigest", "", 5),
            PublishResult::Transient(_)
        ));
        assert!(matches!(
            by_code(400, "InvalidArgument", "", 5),
            PublishResult::Permanent(_)
        ));
    }
}

//! Kafka's error codes as a person reads them: the names Kafka's own tools print.

use kafka_protocol::ResponseError;

/// Kafka's name for an error code, as its tools print it (`UNKNOWN_TOPIC_OR_PARTITION`).
pub fn kafka_name(error: ResponseError) -> String {
    let camel = format!("{error:?}");
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// The error an error code stands for, if it is one.
pub fn error_of(code: i16) -> Option<ResponseError> {
    if code == 0 {
        return None;
    }
    Some(ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError))
}

/// `what` failed with `code`, as one sentence with Kafka's error name.
pub fn failure(what: &str, code: i16) -> String {
    match error_of(code) {
        Some(error) => format!("{what} ({})", kafka_name(error)),
        None => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_like_kafkas() {
        assert_eq!(
            kafka_name(ResponseError::UnknownTopicOrPartition),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(kafka_name(ResponseError::NonEmptyGroup), "NON_EMPTY_GROUP");
        assert_eq!(
            failure("group \"g\" is not empty", 68),
            "group \"g\" is not empty (NON_EMPTY_GROUP)"
        );
        assert_eq!(failure("fine", 0), "fine");
        assert_eq!(error_of(0), None);
    }
}

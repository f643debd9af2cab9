//! The service's errors: one JSON body `{error, type}` with the status that
//! says who is at fault (the client's request, its size, the load, the server).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What went wrong, as the response's `type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: an empty or malformed request (bad JSON, a corrupt image, no image).
    BadRequest,
    /// 401: a missing or wrong API key.
    Unauthorized,
    /// 403: a route this server was not started to allow.
    Forbidden,
    /// 404: no such route.
    NotFound,
    /// 413: the body or the image is over a limit.
    TooLarge,
    /// 415: not PNG or JPEG, or a content type the route does not take.
    UnsupportedMediaType,
    /// 422: a well-formed request that cannot be served (unknown adapter,
    /// invalid retrieval settings, too many classes, ...).
    Validation,
    /// 429: more requests in flight than `--max-concurrent`.
    Overloaded,
    /// 503: not ready yet, timed out, or shutting down.
    Unavailable,
    /// 500: a fault of the server (reported with the request's id in the logs).
    Internal,
}

impl ErrorKind {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` of the JSON body.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Validation => "validation",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// An error response: `{"error": message, "type": kind}` with `kind`'s status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// What the client should know, naming the input at fault.
    pub message: String,
    /// Seconds after which the client may retry (429 and 503 only).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// 422.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// With a `Retry-After` header.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.name())
    }
}

impl std::error::Error for ApiError {}

impl From<semla_pipeline::PipelineError> for ApiError {
    /// The pipeline's bad-input errors (an unknown adapter, a mismatched
    /// embedder, invalid settings) are the client's; file and model faults are
    /// the server's.
    fn from(e: semla_pipeline::PipelineError) -> Self {
        use semla_pipeline::PipelineError as P;
        match e {
            P::Invalid(_) | P::Retrieval(_) => Self::validation(e.to_string()),
            P::Adapter(semla_adapters::AdapterError::InvalidArgument(_)) => {
                Self::validation(e.to_string())
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.kind == ErrorKind::Internal {
            tracing::error!("{}", self.message);
        }
        let body = serde_json::json!({ "error": self.message, "type": self.kind.name() });
        let mut response = (self.kind.status(), axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// The result of a handler.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

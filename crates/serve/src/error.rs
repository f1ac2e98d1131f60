use silica_models::ModelError;

/// Errors of the engine and server. Request errors map to HTTP 4xx, the rest to 5xx.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the prompt has {tokens} tokens but the context holds {context} (prompt + at least one generated token must fit)")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("the queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] silica_models::tokenizer::TokenizerError),
    #[error(transparent)]
    Tensor(#[from] silica_tensor::TensorError),
    /// The output constraint (schema, regex, grammar) is invalid, or this model's tokenizer
    /// cannot carry one.
    #[error("{0}")]
    Structured(#[from] silica_structured::StructuredError),
}

impl ServeError {
    /// Whether the client is at fault (HTTP 4xx).
    pub fn is_client_error(&self) -> bool {
        use silica_models::tokenizer::TokenizerError as T;
        match self {
            ServeError::InvalidRequest(_)
            | ServeError::PromptTooLong { .. }
            | ServeError::Structured(_) => true,
            // A chat template that rejects the messages (raise_exception) or text that cannot be
            // tokenized is the request's fault.
            ServeError::Tokenizer(T::Template { .. } | T::NoChatTemplate { .. } | T::Encode(_)) => {
                true
            }
            _ => false,
        }
    }
}

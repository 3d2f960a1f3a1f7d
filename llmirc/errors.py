"""User-facing errors. The CLI prints `error: <message>` and exits 1 for any LlmircError.

Messages are one line that names the thing (file, tensor, op, pass) and what to do.
"""


class LlmircError(Exception):
    """Base of every error caused by the user's input or machine, not by a bug."""


class CheckpointError(LlmircError):
    """The checkpoint directory cannot be read as a supported model."""


class ArtifactError(LlmircError):
    """An artifact directory is missing, corrupt or of an unknown version."""


class RuntimeDeviceError(LlmircError):
    """The device an artifact needs is not present or cannot be opened."""


class PoolExhaustedError(LlmircError):
    """The KV page pool has fewer free pages than the request needs."""


class PromptTooLongError(LlmircError):
    """A prompt does not fit the model's maximum sequence length."""


class SchedulerConfigError(LlmircError, ValueError):
    """A scheduler limit (max_num_seqs, max_num_batched_tokens, max_model_len) out of range."""


class RequestError(LlmircError, ValueError):
    """A request the engine cannot take: empty prompt, token id outside the vocabulary, a
    request id already in use."""

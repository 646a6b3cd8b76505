"""Errors a user can act on.

Every error raised for bad input names the file, line, field or flag at fault, so a site
operator can fix it without reading a traceback.
"""


class FedVLMError(Exception):
    """Base class of every error fedvlm raises on purpose."""


class ConfigError(FedVLMError, ValueError):
    """A run or node setting is missing, of the wrong type or out of range."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class DataError(FedVLMError, ValueError):
    """A site's data folder is invalid; the message names the file (and line)."""


class ModelNotFoundError(FedVLMError, FileNotFoundError):
    """A base model is neither a local folder nor in the local Hugging Face cache."""

"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""


class APGAError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(APGAError):
    """A flag or setting is invalid."""


class DataError(APGAError):
    """The data root, a CSV file or an image is missing or malformed."""


class CheckpointError(APGAError):
    """A checkpoint is corrupted or belongs to another configuration."""


class NonFiniteError(APGAError):
    """A loss or reward became NaN or infinite during training."""


class ImageError(DataError):
    """An image file cannot be read or decoded; the message names the file and the reason."""


class StorageError(APGAError):
    """A file could not be written (a full disk, a read-only or unwritable folder); `reason` is the
    system's word for why (e.g. 'Read-only file system')."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason

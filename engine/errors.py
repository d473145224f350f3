"""Typed errors. Each carries the gRPC status code name it maps to, so the service layer
turns any engine failure into a precise status with a message a person can act on."""

from __future__ import annotations


class FaceEngineError(Exception):
    """Base class for all engine errors."""

    grpc_code: str = "INTERNAL"


class InvalidImageError(FaceEngineError):
    """The bytes or array given are not a usable image (corrupt, empty, 0x0, too large...)."""

    grpc_code = "INVALID_ARGUMENT"


class InvalidArgumentError(FaceEngineError):
    """A request field is out of range or malformed."""

    grpc_code = "INVALID_ARGUMENT"


class NoFaceError(InvalidArgumentError):
    """An image that must contain exactly one face contains none."""


class MultipleFacesError(InvalidArgumentError):
    """An image that must contain exactly one face contains several."""


class NotFoundError(FaceEngineError):
    """Unknown camera, watchlist, person or event."""

    grpc_code = "NOT_FOUND"


class PermissionDeniedError(FaceEngineError):
    """The caller's token may not do this (its role or its scope forbids it)."""

    grpc_code = "PERMISSION_DENIED"


class AlreadyExistsError(FaceEngineError):
    """Creating something that already exists."""

    grpc_code = "ALREADY_EXISTS"


class FailedPreconditionError(FaceEngineError):
    """The request is valid but conflicts with what is stored (e.g. a photo under an existing person id that
    does not look like that person): the message says how to proceed."""

    grpc_code = "FAILED_PRECONDITION"


class ResourceExhaustedError(FaceEngineError):
    """The engine is overloaded or a size limit was exceeded."""

    grpc_code = "RESOURCE_EXHAUSTED"


class ModelError(FaceEngineError):
    """A model file is missing, corrupt, or does not match its manifest entry."""

    grpc_code = "FAILED_PRECONDITION"


class ModelNotFoundError(ModelError):
    """The model file is not in the model directory."""


class ModelHashMismatchError(ModelError):
    """The model file's SHA-256 differs from the manifest: refuse to load it."""


class ConfigError(FaceEngineError):
    """The configuration file is unreadable or holds an invalid value."""

    grpc_code = "FAILED_PRECONDITION"


class StorageFullError(ResourceExhaustedError):
    """A store write failed because its disk (or its configured size cap) is full."""


class StoreDamagedError(FaceEngineError):
    """The database file is not a usable database (corrupt header or pages)."""

    grpc_code = "DATA_LOSS"


class AuditUnavailableError(FaceEngineError):
    """The audit record of a change could not be written, so the change was refused (fail closed)."""

    grpc_code = "UNAVAILABLE"


class UnavailableError(FaceEngineError):
    """A part the call needs is down for now (a cluster worker restarting, the store unreachable): retry."""

    grpc_code = "UNAVAILABLE"


class StoreUnavailableError(UnavailableError):
    """The database cannot be reached (wrong URL, server down, credentials refused)."""


class StoreSchemaError(ConfigError):
    """The database holds a schema this engine does not know (written by a newer version)."""


class FeatureDisabledError(FaceEngineError):
    """The call needs a feature this server runs without (e.g. sightings.enabled = false)."""

    grpc_code = "FAILED_PRECONDITION"

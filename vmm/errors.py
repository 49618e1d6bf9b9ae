"""The monitor's error hierarchy: each error is shown to the user as one line, never a traceback."""


class VmmError(Exception):
    """A condition the monitor reports as one line and a non-zero exit status."""

    exit_status = 1


class ConfigError(VmmError):
    """Impossible or contradictory options."""

    exit_status = 2


class UnsupportedGuestFeature(VmmError):
    """The guest relies on CPU behaviour this monitor does not model (yet): the run stops as
    `unsupported`."""


class ImageError(VmmError):
    """A guest image that cannot be loaded (format, size, placement)."""


class BusError(VmmError):
    """A device registration that conflicts with another (overlapping port ranges)."""

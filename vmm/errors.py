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


class MonitorBug(VmmError):
    """A state the monitor's own logic says cannot happen: a bug in the monitor, not in the guest.
    A run it ends stops as `monitor_bug` (status 123), as does any exception the monitor did not
    expect (VirtualMachine.run)."""

    exit_status = 123


class ImageError(VmmError):
    """A guest image that cannot be loaded (format, size, placement)."""


class BusError(VmmError):
    """A device registration that conflicts with another (overlapping port ranges)."""

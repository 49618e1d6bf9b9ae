"""A type 2 virtual machine monitor for 32-bit x86 guests, in the VMware binary-translation style."""

__version__ = "0.1.0"

"""The boot lab: a published machine booted in qemu inside a network namespace."""

"""Build matched kernel / initramfs / root-image triples for diskless iSCSI boot."""

__version__ = "0.1.0"

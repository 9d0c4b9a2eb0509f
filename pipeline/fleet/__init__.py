"""The fleet: a site inventory of machines keyed by MAC, published to a TFTP/iPXE tree and an iSCSI store."""

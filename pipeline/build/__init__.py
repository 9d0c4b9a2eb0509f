"""The build: recipes in, matched kernel / initramfs / root-image triples out."""

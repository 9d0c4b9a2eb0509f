#!/bin/sh
# written by the image pipeline while it works in this tree
exit 101

"""Networking plug-ins behind one small interface (none, host now; slirp4netns and
bridge later). ``netplug`` imports ``runtime`` only for the spec types."""

NETWORK_MODES = ("none", "host")

"""fastproxy: a zero-copy TCP proxy and load balancer for Linux."""

__version__ = "0.1.0"

"""Backends deploy one configuration and hand back an Endpoint; see ``base.Backend``."""

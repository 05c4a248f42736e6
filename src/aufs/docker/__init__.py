"""Docker on an aufs store: a graph-driver plugin for dockerd, and the adoption of a data
root that Docker's own aufs driver wrote.

- :mod:`aufs.docker.plugin` — the protocol's methods over :class:`aufs.Driver`;
- :mod:`aufs.docker.server` — HTTP on ``/run/docker/plugins/NAME.sock`` (aiohttp);
- :mod:`aufs.docker.adopt` — ``aufs docker-adopt``: a legacy ``aufs`` data root renamed,
  under a journal, to the plugin's name.

Nothing is imported here: the command line loads what a command needs.
"""

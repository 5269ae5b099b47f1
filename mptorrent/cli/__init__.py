"""The command line (``mptorrent ...``) and the self-contained demo. Nothing imports it."""

"""What training code imports: the client and the Aim-style face (Repo, Container, Run,
Sequence, Metric).

Writes only through :mod:`trackd.wire` (via :mod:`trackd.sdk.client`); reads through
:mod:`trackd.views`. Never imports the daemon stack (uvloop, aiosqlite, watchfiles,
``trackd.daemon``), so ``import trackd`` stays light.
"""

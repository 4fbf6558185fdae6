"""The edge: nginx in front of the app, answering what needs no Python.

A Python request costs 70-200 µs on this class of machine before any handler runs, and
Granian's file sending reads and writes instead of calling sendfile(2); nginx answers a
small static file in 20-130 µs and sends files with sendfile. So ``nixfarm up`` runs
nginx on the public address and the app (Granian) on a Unix socket behind it, and the
app decides, per answer, whether nginx may give that answer itself from now on:

- **Published files** (``DATA_DIR/edge/www``): when the app answers a read that is the
  same for every client and cannot change (a public cache's ``nix-cache-info`` and
  narinfos and NAR files, a registry manifest by digest when pulls need no token), it
  also writes the answer there (atomically: a temporary file renamed into place; NAR
  files are hard links to the stored file). nginx tries that tree first for GET and
  HEAD and falls back to the app on a miss, so the tree is only ever a cache of what the
  app would say: emptying it (done at every start) loses nothing.
- **Tags** (``tags.map``): a manifest by tag needs its digest in a header, which a
  static file cannot carry; the app adds ``"<uri>" <hex>;`` lines to an nginx map and
  reloads nginx. Only tags whose target cannot move are published, and a path source's
  entries are dropped when its content changes (the registry watches it).
- **X-Accel-Redirect**: every other stored file the app decides to send (a private
  cache's NAR, a blob behind pull auth) is handed to nginx by name after the app checked
  the token, so the bytes never pass through Python.

What nginx answers itself is reported back to the app's ``/metrics`` through its
access log, which the app follows (see :mod:`nixfarm.edge.accesslog`). Without nginx
(``edge.server = "none"``, or not installed) the app answers everything itself.
"""

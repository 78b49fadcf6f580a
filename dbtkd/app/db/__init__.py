"""The database side of the API: engines, value encoding, and the stores in the data dir.

``engine`` defines what every engine offers (``Engine``, ``QueryResult``, ``DatabaseError``);
``sqlite``, ``postgresql`` and ``mysql`` implement it, each importing its driver only when a
connection of that type is first opened, so the worker starts as fast without them;
``pgcatalog`` and ``mycatalog`` read the server catalogues for the schema tree and statistics,
``sqlscan`` finds statement boundaries in PostgreSQL scripts, ``values`` turns database values
into JSON. ``sessions`` keeps the open connections per saved connection; ``profiles`` is the
connections store and ``history`` the query history, both files in the data dir written
through ``dbtkd.app.store``. The HTTP and WebSocket routes that use all this live one level up
(``dbtkd.app.connections``, ``queries``, ``schema``, ``analytics``), composed by
``dbtkd.app.routes``. See ``docs/database-api.md``.
"""

"""SQL methods without Python: the named statements of ``NAME.sql`` files, run on database ``NAME``.

* :mod:`~sbusr.sql.databases` -- ``[sql] databases``: names and URLs (drivers filled in);
* :mod:`~sbusr.sql.statements` -- parsing a ``.sql`` file (aiosql's format) into statements;
* :mod:`~sbusr.sql.paramstyle` -- a statement's ``:name`` params in the driver's own style;
* :mod:`~sbusr.sql.pools` -- one lazy, pre-pinged connection pool per database and process;
* :mod:`~sbusr.sql.timeouts` -- the call's time limit, enforced by the database too;
* :mod:`~sbusr.sql.errors` -- database errors as JSON-RPC errors (-32050, -32051);
* :mod:`~sbusr.sql.runner` -- one call: one transaction, the result shaped by the statement's suffix;
* :mod:`~sbusr.sql.endpoints` -- one oslo endpoint per file, loaded with the other endpoints.
"""

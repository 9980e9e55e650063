"""sbusr-api: the Tornado application that starts IPSC flows over HTTP and serves metrics and the
status page.

``app`` builds the application from its routes; ``handlers`` are the JSON routes and what every
route shares, ``status`` the status page, its login and the routes it reads; ``requests`` checks
what clients send before anything reaches the bus; ``bus`` is the API's own SmartBus identity and
the oslo ``RPCClient`` calls it makes; ``errors`` the one error type the client sees;
``templates`` the status page's HTML. The program (``sbusr-api``) is :mod:`sbusr.cmd.api`.
"""

"""sbusr-api: the Tornado application that starts IPSC flows over HTTP and serves metrics and the
status page."""

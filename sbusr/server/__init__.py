"""sbusr-server's application: the thread- and process-mode services (:mod:`.services`) and what runs
beside them (:mod:`.background`: timers, the spooler, reload on save)."""
